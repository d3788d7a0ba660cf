package driver

import "syscall"

// sysProcAttr puts a worker in its own process group and asks the kernel to send it
// SIGTERM (a drain) should the autoscaler die without shutting it down. The kernel ties
// Pdeathsig to the thread that forked; Go keeps its threads alive unless a goroutine
// exits while locked to one, which the autoscaler never does.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
