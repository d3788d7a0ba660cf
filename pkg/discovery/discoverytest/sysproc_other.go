//go:build !linux

package discoverytest

import "syscall"

// sysProcAttr: only Linux can tie the agent's life to the test process;
// elsewhere a test process that dies without cleanups leaves it running.
func sysProcAttr() *syscall.SysProcAttr { return nil }
