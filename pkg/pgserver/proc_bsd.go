//go:build unix && !linux

package pgserver

import "syscall"

// setPdeathsig is a no-op where the kernel has no parent-death signal: there
// a postgres whose parent crashed keeps running until it is stopped.
func setPdeathsig(*syscall.SysProcAttr) {}
