//go:build linux

package childproc_test

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/childproc"
)

// sleeper is a child that lives until it is killed, with a parent-death signal.
func sleeper() *exec.Cmd {
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// onThreadThatEnds runs start on a goroutine locked to an OS thread, lets that goroutine
// exit (so that the Go runtime ends the thread) and waits until the thread is gone. The
// main thread is never ended (the runtime parks it instead): a goroutine that lands there
// keeps it until the test ends, and start runs on another.
func onThreadThatEnds(t *testing.T, start func()) {
	t.Helper()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	tids := make(chan int, 1)
	for {
		go func() {
			runtime.LockOSThread() // never unlocked (but on the main thread): the thread ends with this goroutine
			if syscall.Gettid() == os.Getpid() {
				tids <- 0
				<-release
				runtime.UnlockOSThread()
				return
			}
			start()
			tids <- syscall.Gettid()
		}()
		if tid := <-tids; tid != 0 {
			task := "/proc/self/task/" + strconv.Itoa(tid)
			require.Eventually(t, func() bool {
				_, err := os.Stat(task)
				return os.IsNotExist(err)
			}, 10*time.Second, time.Millisecond, "the locked thread ends with its goroutine")
			return
		}
	}
}

// What Start prevents: a child forked by a thread that ends gets its parent-death signal
// although its parent process lives on.
func TestPlainStartDiesWithTheThreadThatForked(t *testing.T) {
	cmd := sleeper()
	exited := make(chan error, 1)
	onThreadThatEnds(t, func() {
		require.NoError(t, cmd.Start())
		go func() { exited <- cmd.Wait() }()
	})
	select {
	case err := <-exited:
		require.ErrorContains(t, err, "killed", "the parent-death signal")
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("the child outlived the thread that forked it: this kernel ties the signal to the process, and the other test proves nothing here")
	}
}

// A child started with Start from a thread that then ends lives on until it is killed,
// and its exit reaches the channel.
func TestStartedChildOutlivesTheThreadOfItsCaller(t *testing.T) {
	cmd := sleeper()
	var exited <-chan error
	onThreadThatEnds(t, func() {
		var err error
		exited, err = childproc.Start(cmd)
		require.NoError(t, err)
	})
	select {
	case err := <-exited:
		t.Fatalf("the child died with its caller's thread: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.ErrorContains(t, <-exited, "terminated")
}

func TestStartFailureIsReturned(t *testing.T) {
	exited, err := childproc.Start(exec.Command("/nonexistent/binary"))
	require.ErrorContains(t, err, "/nonexistent/binary")
	require.Nil(t, exited)
}
