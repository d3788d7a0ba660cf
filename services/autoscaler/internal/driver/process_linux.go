package driver

import "syscall"

// sysProcAttr puts a worker in its own process group and asks the kernel to send it
// SIGTERM (a drain) should the autoscaler die without shutting it down.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
