package discoverytest

import "syscall"

// sysProcAttr has the kernel kill the agent when the test process dies
// without running its cleanups (a panic, go test's timeout), so no agent
// outlives its test binary.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
