// Package childproc starts child processes whose parent-death signal holds for the life
// of the process that started them.
//
// Linux sends a child its parent-death signal (SysProcAttr.Pdeathsig, PR_SET_PDEATHSIG)
// when the thread that forked it exits, not when the process does. The Go runtime ends
// an OS thread when a goroutine exits while locked to it (runtime.LockOSThread), and
// until then that thread may have run any goroutine: a cmd.Start from a goroutine that
// happened to run there forks from it, and its child is signalled when a goroutine locked
// to the thread later exits — in the middle of its work, for no reason of its own. A
// test's PgBouncer went this way when another test stopped its PostgreSQL (pgserver
// starts postgres from a locked thread).
//
// Start forks every child from a thread locked for that child alone, which ends only
// after the child has exited.
package childproc

import (
	"os/exec"
	"runtime"
)

// Start starts cmd from a goroutine locked to its OS thread, waits for it there, and
// returns a channel that receives cmd.Wait's result once the child has exited (and cmd's
// copying of its output, if any, has ended). The thread ends with that goroutine, after
// the child.
func Start(cmd *exec.Cmd) (<-chan error, error) {
	started := make(chan error, 1)
	exited := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine, after the child
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		exited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return exited, nil
}
