// Package proctest runs real binaries for process-level tests: it builds them once per
// test binary (Build), starts, signals, kills and waits for them with their output in a
// log file (Process, Group), and gives the tests loopback addresses (FreeAddr, FreePort)
// and a way to wait for a condition without a bare sleep (Eventually).
//
// Use it from TestMain:
//
//	var bins proctest.Binaries
//
//	func TestMain(m *testing.M) {
//		var err error
//		if bins, err = proctest.Build("example.com/mod/cmd/server"); err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//		os.Exit(m.Run())
//	}
//
//	func TestSomething(t *testing.T) {
//		p := proctest.New(t, proctest.Spec{Name: "server", Bin: bins["server"], Log: ...})
//		p.Start()
//		...
//	}
//
// It owns the directories of binaries it builds and the processes it starts. It must
// never be imported by non-test code, never signal a process it did not start, and never
// remove a directory whose owner (the test binary that made it) is alive.
package proctest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/childproc"
)

const (
	binDirPattern = "agentserver-proctest-bin-*"
	binOwnerFile  = "owner.pid" // the pid of the test binary that made the directory
)

// Binaries are the paths of the binaries Build built, by name: the last element of the
// import path, as go build names them.
type Binaries map[string]string

// Build builds the main packages named by importPaths, with one go build run in the
// test's working directory (so a go.work there applies), into a fresh temporary
// directory, and returns their paths. Call it once, from TestMain.
//
// The directory is not removed on the way out (a TestMain that ends with os.Exit, such as
// pgtest.Main, could not do it): it carries an owner.pid file, and every later Build
// removes the directories whose owner is gone.
func Build(importPaths ...string) (Binaries, error) {
	bins := make(Binaries, len(importPaths))
	for _, p := range importPaths {
		name := path.Base(p)
		if _, dup := bins[name]; dup {
			return nil, fmt.Errorf("two binaries named %s", name)
		}
		bins[name] = ""
	}
	removeStaleBinDirs()
	dir, err := os.MkdirTemp("", binDirPattern)
	if err != nil {
		return nil, fmt.Errorf("creating the binaries' directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, binOwnerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, errors.Join(fmt.Errorf("writing %s: %w", binOwnerFile, err), os.RemoveAll(dir))
	}
	cmd := exec.Command("go", append([]string{"build", "-o", dir + string(filepath.Separator)}, importPaths...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("building the binaries: %v\n%s", err, out)
	}
	for name := range bins {
		bins[name] = filepath.Join(dir, name)
	}
	return bins, nil
}

// removeStaleBinDirs removes the binaries' directories of test binaries that are gone.
func removeStaleBinDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), binDirPattern))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, binOwnerFile))
		if err != nil {
			continue // being made right now, or not ours
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			_ = os.RemoveAll(dir)
		}
	}
}

// ServiceEnv is the test binary's environment without any setting of agentserver's
// services (DATABASE_URL and the AGENTSERVER_, GATEWAY_, SCHEDULER_, WORKER_, CONSUL_ and
// OTEL_ variables), so that only what a test sets configures the processes it starts: an
// AGENTSERVER_CONFIG file or a DATABASE_URL in the developer's shell must not leak in.
func ServiceEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "DATABASE_URL",
			strings.HasPrefix(name, "AGENTSERVER_"), strings.HasPrefix(name, "GATEWAY_"),
			strings.HasPrefix(name, "SCHEDULER_"), strings.HasPrefix(name, "WORKER_"),
			strings.HasPrefix(name, "CONSUL_"), strings.HasPrefix(name, "OTEL_"):
			continue
		}
		out = append(out, kv)
	}
	return out
}

// Spec describes a process to run.
type Spec struct {
	// Name names the process in messages.
	Name string
	// Bin is the path of the binary, Args its arguments.
	Bin  string
	Args []string
	// Env is the process's whole environment: nil means the test binary's (as for
	// exec.Cmd). Tests usually pass append(os.Environ(), ...) or append(ServiceEnv(), ...).
	Env []string
	// Log is the file that receives the process's stdout and stderr, appended to by every
	// start.
	Log string
}

// Process is a binary run by a test, possibly several times in a row: each Start runs a
// new incarnation with the same binary, arguments, environment and log file. Its methods
// report failures to the test it was made for.
type Process struct {
	t    testing.TB
	spec Spec

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	state  *os.ProcessState
}

// New returns a process of test t, not started yet.
func New(t testing.TB, spec Spec) *Process {
	return &Process{t: t, spec: spec}
}

// Start starts a new incarnation of the process; the previous one, if any, must have
// exited. The process runs in its own process group (a signal to the test's group does
// not reach it) and is killed when the test binary dies, so a crashed test leaves
// nothing behind; children that set the same death signal go with it.
func (p *Process) Start() {
	p.t.Helper()
	f, err := os.OpenFile(p.spec.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	require.NoError(p.t, err)
	fmt.Fprintf(f, "===== %s starting at %s\n", p.spec.Name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.spec.Bin, p.spec.Args...)
	cmd.Env = p.spec.Env
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// From a thread of its own (childproc): the death signal must come with the test
	// binary's end, not with the end of a thread that some other start locked.
	waited, err := childproc.Start(cmd)
	if err != nil {
		f.Close()
		require.NoError(p.t, err, "starting %s", p.spec.Name)
	}
	exited := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.exited, p.state = cmd, exited, nil
	p.mu.Unlock()
	go func() {
		<-waited
		f.Close()
		p.mu.Lock()
		p.state = cmd.ProcessState
		p.mu.Unlock()
		close(exited)
	}()
}

// current returns the current (or last) incarnation; Start must have been called.
func (p *Process) current() (*exec.Cmd, chan struct{}) {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		p.t.Fatalf("%s was never started", p.spec.Name)
	}
	return p.cmd, p.exited
}

// Pid is the process id of the current (or last) incarnation.
func (p *Process) Pid() int {
	cmd, _ := p.current()
	return cmd.Process.Pid
}

// Running reports whether the process was started and its current incarnation has not
// exited yet.
func (p *Process) Running() bool {
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// Signal sends sig to the process (SIGSTOP, SIGCONT, SIGTERM...).
func (p *Process) Signal(sig syscall.Signal) {
	p.t.Helper()
	cmd, _ := p.current()
	require.NoError(p.t, cmd.Process.Signal(sig), "sending %v to %s", sig, p.spec.Name)
}

// Kill sends SIGKILL (which ends a stopped process too) and waits until the process is
// reaped. It returns when that was: the process, and the children that die with it, were
// dead by then.
func (p *Process) Kill() time.Time {
	p.t.Helper()
	cmd, exited := p.current()
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		p.t.Fatalf("%s (pid %d) did not die within 30s of SIGKILL", p.spec.Name, cmd.Process.Pid)
	}
	return time.Now()
}

// Stop ends the process if it runs: SIGTERM, so that it can shut down cleanly, then
// SIGKILL if it has not exited within grace.
func (p *Process) Stop(grace time.Duration) {
	p.t.Helper()
	if !p.Running() {
		return
	}
	cmd, exited := p.current()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(grace):
		p.Kill()
	}
}

// Wait waits up to timeout for the process to exit and returns its exit state.
func (p *Process) Wait(timeout time.Duration) *os.ProcessState {
	p.t.Helper()
	cmd, exited := p.current()
	select {
	case <-exited:
	case <-time.After(timeout):
		p.t.Fatalf("%s (pid %d) did not exit within %s", p.spec.Name, cmd.Process.Pid, timeout)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// Await polls cond like Eventually, and fails the test at once, with the end of the log,
// if the process exits while it waits.
func (p *Process) Await(timeout time.Duration, what string, cond func() (bool, string)) {
	p.t.Helper()
	Eventually(p.t, timeout, what, func() (bool, string) {
		if !p.Running() {
			p.t.Fatalf("%s exited:\n%s", p.spec.Name, tail(p.LogText(), 30))
		}
		return cond()
	})
}

// LogText returns the process's log so far (of every incarnation).
func (p *Process) LogText() string {
	b, _ := os.ReadFile(p.spec.Log)
	return string(b)
}

// ReportLog logs the last lines of the process's log if the test failed.
func (p *Process) ReportLog() {
	if p.t.Failed() {
		p.t.Logf("----- last lines of %s (%s):\n%s", p.spec.Name, p.spec.Log, tail(p.LogText(), 40))
	}
}

// Group is the processes of one test that end together: when the test ends, every one
// still running is killed (SIGKILL) and, if the test failed, the end of every log is
// printed.
type Group struct {
	t     testing.TB
	mu    sync.Mutex
	procs []*Process
}

// NewGroup returns an empty group of test t. The processes are killed by a cleanup of
// t registered now: it runs after the cleanups registered later (closing clients).
func NewGroup(t testing.TB) *Group {
	g := &Group{t: t}
	t.Cleanup(g.killAll)
	return g
}

// New returns a process of the group, not started yet.
func (g *Group) New(spec Spec) *Process {
	p := New(g.t, spec)
	g.mu.Lock()
	g.procs = append(g.procs, p)
	g.mu.Unlock()
	return p
}

func (g *Group) killAll() {
	g.mu.Lock()
	procs := append([]*Process(nil), g.procs...)
	g.mu.Unlock()
	for _, p := range procs {
		if p.Running() {
			p.Kill()
		}
	}
	for _, p := range procs {
		p.ReportLog()
	}
}

// Eventually polls cond every 20ms until it holds, failing the test after timeout with
// cond's last explanation, or when the test's context ends. It is how tests wait: never a
// bare sleep.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s: %s", timeout, what, why)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("test ended while waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// HTTPOK is a condition for Eventually and Await: a GET of url answers 200 OK.
func HTTPOK(url string) func() (bool, string) {
	return func() (bool, string) {
		resp, err := http.Get(url)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	}
}

// Listening is a condition for Eventually and Await: a TCP connection to addr succeeds
// within a second.
func Listening(addr string) func() (bool, string) {
	return func() (bool, string) {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false, err.Error()
		}
		conn.Close()
		return true, ""
	}
}

// FreeAddr returns a loopback address (host:port) with a port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	_, port, err := net.SplitHostPort(FreeAddr(t))
	require.NoError(t, err)
	n, err := strconv.Atoi(port)
	require.NoError(t, err)
	return n
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WriteExecutable writes an executable file (a script the test will run) without this
// process ever holding it open for writing. A file written with os.WriteFile and run while
// a parallel test forks can fail with "text file busy": the child forked meanwhile holds
// the write descriptor until it execs (Go issue 22315). The content goes to a private
// temporary file, and a child process (install) writes the executable itself.
func WriteExecutable(t testing.TB, path string, content []byte) {
	t.Helper()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".executable-*")
	require.NoError(t, err)
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(content)
	require.NoError(t, errors.Join(err, tmp.Close()))
	out, err := exec.Command("install", "-m", "0755", tmp.Name(), path).CombinedOutput()
	require.NoError(t, err, "installing %s: %s", path, out)
}
