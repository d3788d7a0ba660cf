package pgserver

import "syscall"

// setPdeathsig makes the kernel send SIGINT, PostgreSQL's fast shutdown, to
// the child when its parent dies: a crashed test binary or dev server leaves
// no postgres behind, and the data directory is left cleanly shut down and
// reusable. SIGKILL would leave a crashed cluster; SIGTERM (smart shutdown)
// would wait for clients that are never going to disconnect.
//
// The kernel sends it when the parent *thread* exits, so children are
// started from an OS thread that stays locked until they exit (runChild, package
// childproc).
func setPdeathsig(attr *syscall.SysProcAttr) {
	attr.Pdeathsig = syscall.SIGINT
}
