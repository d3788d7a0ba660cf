package proctest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const testprocPkg = "github.com/agentserver/agentserver/pkg/proctest/internal/testproc"

var bins Binaries

func TestMain(m *testing.M) {
	var err error
	if bins, err = Build(testprocPkg); err != nil {
		fmt.Fprintln(os.Stderr, "proctest:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(filepath.Dir(bins["testproc"]))
	os.Exit(code)
}

// binDir makes a binaries' directory as Build does, with the given owner file content
// (none when owner is empty), and removes it when the test ends.
func binDir(t *testing.T, owner string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", binDirPattern)
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if owner != "" {
		require.NoError(t, os.WriteFile(filepath.Join(dir, binOwnerFile), []byte(owner), 0o644))
	}
	return dir
}

func TestBuildRemovesOnlyDirectoriesOfDeadOwners(t *testing.T) {
	dead := exec.Command("true")
	require.NoError(t, dead.Run()) // reaped: its pid is free
	stale := binDir(t, strconv.Itoa(dead.Process.Pid)+"\n")
	live := binDir(t, strconv.Itoa(os.Getppid())+"\n")
	mine := binDir(t, strconv.Itoa(os.Getpid())+"\n")
	making := binDir(t, "")
	garbled := binDir(t, "not a pid")

	b, err := Build(testprocPkg)
	require.NoError(t, err)
	dir := filepath.Dir(b["testproc"])
	t.Cleanup(func() { _ = os.RemoveAll(dir) })

	require.NoDirExists(t, stale)
	for _, d := range []string{live, mine, making, garbled} {
		require.DirExists(t, d)
	}
	require.Equal(t, Binaries{"testproc": filepath.Join(dir, "testproc")}, b)
	require.FileExists(t, b["testproc"])
	owner, err := os.ReadFile(filepath.Join(dir, binOwnerFile))
	require.NoError(t, err)
	require.Equal(t, strconv.Itoa(os.Getpid())+"\n", string(owner))
}

// myBinDirs returns the binaries' directories this test binary owns.
func myBinDirs(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), binDirPattern))
	require.NoError(t, err)
	var mine []string
	for _, dir := range dirs {
		if b, err := os.ReadFile(filepath.Join(dir, binOwnerFile)); err == nil && string(b) == strconv.Itoa(os.Getpid())+"\n" {
			mine = append(mine, dir)
		}
	}
	return mine
}

func TestBuildFailure(t *testing.T) {
	before := myBinDirs(t)
	_, err := Build(testprocPkg, "github.com/agentserver/agentserver/pkg/proctest/internal/nosuch")
	require.ErrorContains(t, err, "building the binaries")
	require.Equal(t, before, myBinDirs(t), "the failed build's directory is removed")

	_, err = Build("example.com/a/server", "example.com/b/server")
	require.ErrorContains(t, err, "two binaries named server")
}

func TestServiceEnv(t *testing.T) {
	for _, name := range []string{"DATABASE_URL", "AGENTSERVER_CONFIG", "GATEWAY_HTTP_ADDR", "SCHEDULER_ID",
		"WORKER_SLOTS", "CONSUL_HTTP_ADDR", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		t.Setenv(name, "x")
	}
	t.Setenv("PROCTEST_KEPT", "y")
	env := ServiceEnv()
	require.Contains(t, env, "PROCTEST_KEPT=y")
	for _, kv := range env {
		require.NotRegexp(t, `^(DATABASE_URL|AGENTSERVER_|GATEWAY_|SCHEDULER_|WORKER_|CONSUL_|OTEL_)`, kv)
	}
}

func TestProcessLifecycle(t *testing.T) {
	addr := FreeAddr(t)
	log := filepath.Join(t.TempDir(), "p.log")
	p := New(t, Spec{Name: "p", Bin: bins["testproc"], Args: []string{"a", "b"},
		Env: append(os.Environ(), "TESTPROC_ECHO=hello", "TESTPROC_ADDR="+addr), Log: log})
	require.False(t, p.Running(), "not started")

	p.Start()
	p.Await(30*time.Second, "p healthy", HTTPOK("http://"+addr+"/healthz"))
	Eventually(t, 10*time.Second, "p listening", Listening(addr))
	require.True(t, p.Running())
	require.Contains(t, p.LogText(), `args ["a" "b"] echo "hello"`)

	// Stopped, it still runs; SIGTERM ends it once continued.
	p.Signal(syscall.SIGSTOP)
	p.Signal(syscall.SIGCONT)
	p.Stop(30 * time.Second)
	require.False(t, p.Running())
	st := p.Wait(time.Second)
	require.True(t, st.Exited())
	require.Equal(t, 0, st.ExitCode())

	// A restart is a new incarnation writing to the same log; SIGKILL ends a stopped one.
	first := p.Pid()
	p.Start()
	require.NotEqual(t, first, p.Pid())
	p.Signal(syscall.SIGSTOP)
	killed := p.Kill()
	require.WithinDuration(t, time.Now(), killed, 30*time.Second)
	require.False(t, p.Running())
	require.Equal(t, syscall.SIGKILL, p.Wait(time.Second).Sys().(syscall.WaitStatus).Signal())
	text := p.LogText()
	require.Equal(t, 2, strings.Count(text, "===== p starting at "), text)
	require.Equal(t, 1, strings.Count(text, "stopping"), text)
}

func TestProcessExitStatus(t *testing.T) {
	p := New(t, Spec{Name: "p", Bin: bins["testproc"], Args: []string{"-exit", "3"}, Log: filepath.Join(t.TempDir(), "p.log")})
	p.Start()
	require.Equal(t, 3, p.Wait(30*time.Second).ExitCode())
	p.Stop(time.Second) // not running: nothing to do
}

func TestGroupKillsWhatRuns(t *testing.T) {
	var running, exited *Process
	t.Run("group", func(t *testing.T) {
		g := NewGroup(t)
		dir := t.TempDir()
		running = g.New(Spec{Name: "running", Bin: bins["testproc"], Log: filepath.Join(dir, "running.log")})
		exited = g.New(Spec{Name: "exited", Bin: bins["testproc"], Args: []string{"-exit", "0"}, Log: filepath.Join(dir, "exited.log")})
		g.New(Spec{Name: "never started", Bin: bins["testproc"], Log: filepath.Join(dir, "never.log")})
		running.Start()
		exited.Start()
		exited.Wait(30 * time.Second)
	})
	require.False(t, running.Running())
	require.Equal(t, syscall.SIGKILL, running.Wait(time.Second).Sys().(syscall.WaitStatus).Signal())
	require.Equal(t, 0, exited.Wait(time.Second).ExitCode())
}

// fatalRecorder is a test whose Fatalf records the message and ends the goroutine, as
// testing.T's does, without failing the real test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// fatal runs f with a fatalRecorder in its own goroutine and returns what it failed with.
func fatal(t *testing.T, f func(tb testing.TB)) string {
	r := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r.msg
}

func TestEventually(t *testing.T) {
	n := 0
	Eventually(t, 10*time.Second, "three polls", func() (bool, string) {
		n++
		return n == 3, ""
	})
	require.Equal(t, 3, n)

	msg := fatal(t, func(tb testing.TB) {
		Eventually(tb, 50*time.Millisecond, "nothing", func() (bool, string) { return false, "still not" })
	})
	require.Equal(t, "waited 50ms for nothing: still not", msg)
}

func TestAwaitFailsWhenTheProcessExits(t *testing.T) {
	log := filepath.Join(t.TempDir(), "p.log")
	msg := fatal(t, func(tb testing.TB) {
		p := New(tb, Spec{Name: "p", Bin: bins["testproc"], Args: []string{"-exit", "1", "bye"}, Log: log})
		p.Start()
		p.Await(30*time.Second, "never", func() (bool, string) { return false, "" })
	})
	require.Contains(t, msg, "p exited:\n")
	require.Contains(t, msg, `args ["bye"]`)
}

func TestFreeAddrAndPort(t *testing.T) {
	addr := FreeAddr(t)
	require.True(t, strings.HasPrefix(addr, "127.0.0.1:"), addr)
	port := FreePort(t)
	require.Greater(t, port, 0)
	require.Less(t, port, 1<<16)
}

func TestTail(t *testing.T) {
	require.Equal(t, "", tail("", 3))
	require.Equal(t, "a\nb", tail("a\nb\n", 3))
	require.Equal(t, "c\nd", tail("a\nb\nc\nd\n", 2))
}
