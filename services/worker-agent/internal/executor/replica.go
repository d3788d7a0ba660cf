package executor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/agentserver/agentserver/pkg/childproc"
	"github.com/agentserver/agentserver/pkg/flow"
)

// failure is a step that ended without a usable answer from its executor.
type failure struct {
	msg       string
	retryable bool
}

func (f *failure) Error() string { return f.msg }

// replica is one executor process. A pool hands it to one request at a time.
type replica struct {
	executor string
	index    int
	pid      int
	cfg      *Config
	logger   *slog.Logger

	stdin  *os.File
	stdout *os.File
	stderr *os.File
	// in and probe are single non-blocking system calls on stdin and stdout; probe's
	// RawConn also serves out's reads.
	in, probe *oneShot

	// out buffers stdout. It is read only by the goroutine holding the replica: call, on
	// the runner's own goroutine, and reusable. The pipe is non-blocking (os.Pipe), so a
	// read waits in the runtime's poller and its read deadline interrupts it: set to the
	// past when the request's context ends, and to ExitGrace ahead when the process exits
	// or a write of the request fails.
	out *bufio.Reader
	// interrupt ends a read of stdout at once (its deadline in the past): call arranges
	// for the request's context to call it when it ends (interruptOnEnd).
	interrupt func()
	// exited is closed once the process has been reaped (and its process group killed).
	exited     chan struct{}
	exitState  *os.ProcessState
	stderrDone chan struct{}
	killOnce   sync.Once
	errReader  *trackedReader

	// memLimit is the executor's resources.memory in bytes (0 = none).
	memLimit int64
	// cgroupDir is the replica's own cgroup v2 group when the limit is a cgroup's.
	cgroupDir string
	// oomKilled records, before exited closes, that the kernel killed it for its limit.
	oomKilled bool

	mu       sync.Mutex
	broken   bool // killed or broke the protocol: never reuse
	sink     func(line string)
	logBytes int64
	logShut  bool
	tail     []string
	// mux is set on a replica that takes several requests at once (mux.go).
	mux *muxState

	lastUsed time.Time // guarded by the owning pool's mu
	// load is the requests a shared replica holds (pool.per > 1), guarded by the pool's mu:
	// handed out by acquire and not yet released, abandoned ones included.
	load int
}

// startReplica starts one executor process with the given environment.
// Its stderr goes to sink from the first line on.
// A shared replica (one that takes several requests at once, mux.go) has no sink.
func startReplica(cfg *Config, logger *slog.Logger, def flow.Executor, index int, env []string, sink func(string), shared bool) (*replica, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("creating stdin pipe: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		closeAll(inR, inW)
		return nil, fmt.Errorf("creating stdout pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		closeAll(inR, inW, outR, outW)
		return nil, fmt.Errorf("creating stderr pipe: %w", err)
	}

	cmd := exec.Command(def.Command[0], def.Command[1:]...)
	var cgroupDir string
	var cgroupFD *os.File
	if def.Resources.Memory > 0 && cfg.CgroupDir != "" {
		cg, err := newCgroupV2(cfg.CgroupDir)
		if err == nil {
			cgroupDir, err = cg.create(fmt.Sprintf("replica-%s-%d-%d", def.Name, index, time.Now().UnixNano()), def.Resources.Memory)
		}
		if err == nil {
			cgroupFD, err = os.Open(cgroupDir)
		}
		if err != nil {
			closeAll(inR, inW, outR, outW, errR, errW)
			return nil, fmt.Errorf("memory limit: %w", err)
		}
	} else if def.Resources.Memory > 0 {
		// resources.memory is an address-space limit on the replica and everything it
		// starts, set by the shell before it execs the command: no window in which the
		// process runs unlimited. (ulimit -v counts KiB.)
		kib := strconv.FormatInt((def.Resources.Memory+1023)/1024, 10)
		cmd = exec.Command("/bin/sh", append([]string{"-c", `ulimit -v "$0" && exec "$@"`, kib}, def.Command...)...)
	}
	cmd.Dir = filepath.Join(cfg.Dir, def.Workdir)
	cmd.Env = env
	// Plain files rather than StdoutPipe: Wait then never waits for our readers, and a process
	// that exits while a grandchild still holds its stdout is noticed at once.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group, so that killing the replica kills everything it started.
		Setpgid: true,
		// Dies with the worker even when the worker is SIGKILLed.
		Pdeathsig: syscall.SIGKILL,
	}
	if cgroupFD != nil {
		// Started inside its group (clone3 CLONE_INTO_CGROUP): limited from its first
		// instruction.
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cgroupFD.Fd())
	}
	// From a thread of its own (childproc): the kernel sends Pdeathsig when the thread that
	// forked exits, and a process that also runs a PostgreSQL (the all-in-one server) ends
	// the thread that started it when it stops it.
	waited, err := childproc.Start(cmd)
	closeAll(inR, outW, errW) // the child holds its own copies
	if cgroupFD != nil {
		cgroupFD.Close()
	}
	if err != nil {
		closeAll(inW, outR, errR)
		if cgroupDir != "" {
			_ = os.Remove(cgroupDir)
		}
		return nil, err
	}

	r := &replica{
		memLimit:   def.Resources.Memory,
		cgroupDir:  cgroupDir,
		executor:   def.Name,
		index:      index,
		pid:        cmd.Process.Pid,
		cfg:        cfg,
		logger:     logger,
		stdin:      inW,
		stdout:     outR,
		stderr:     errR,
		exited:     make(chan struct{}),
		stderrDone: make(chan struct{}),
		errReader:  newTrackedReader(newOneShot(errR), "stderr"),
		in:         newOneShot(inW),
		probe:      newOneShot(outR),
		sink:       sink,
	}
	if shared {
		r.mux = &muxState{calls: map[string]*muxCall{}, abandoned: map[string]bool{}}
	}
	r.out = bufio.NewReaderSize(newTrackedReader(r.probe, "stdout"), 64<<10)
	r.interrupt = func() { _ = r.stdout.SetReadDeadline(time.Unix(1, 0)) }
	go func() {
		<-waited
		r.exitState = cmd.ProcessState
		// Whatever the replica left running in its group dies with it: no orphans.
		_ = syscall.Kill(-r.pid, syscall.SIGKILL)
		if r.cgroupDir != "" {
			r.oomKilled = oomKilled(r.cgroupDir)
			removeCgroup(r.cgroupDir)
		}
		close(r.exited)
		// A request in flight reads what the process wrote before it died; its stdout ends
		// now unless something that escaped the group holds it: then the read gives up after
		// the grace.
		r.graceDeadline()
	}()
	go r.readStderr()
	return r, nil
}

func closeAll(files ...*os.File) {
	for _, f := range files {
		_ = f.Close()
	}
}

// graceDeadline bounds the reads of stdout to ExitGrace from now: the process exited or
// stopped reading its request, so only what it already wrote is still to come.
func (r *replica) graceDeadline() {
	_ = r.stdout.SetReadDeadline(time.Now().Add(r.cfg.ExitGrace))
}

func (r *replica) readStderr() {
	defer close(r.stderrDone)
	br := bufio.NewReaderSize(r.errReader, 16<<10)
	for {
		line, truncated, err := readLine(br, r.cfg.MaxLogLineBytes, true)
		if err != nil {
			return
		}
		s := string(line)
		if truncated {
			s += " … [line truncated]"
		}
		r.logLine(s)
	}
}

// logLine keeps line in the stderr tail and hands it to the current request's log sink, within
// the per-step log budget; with no request in flight it goes to the manager's logger.
func (r *replica) logLine(line string) {
	r.mu.Lock()
	r.tail = append(r.tail, line)
	if over := len(r.tail) - r.cfg.StderrTailLines; over > 0 {
		r.tail = append(r.tail[:0], r.tail[over:]...)
	}
	sink := r.sink
	idle := sink == nil
	if sink != nil {
		if r.logShut {
			sink = nil
		} else if r.logBytes += int64(len(line)) + 1; r.logBytes > r.cfg.MaxStepLogBytes {
			r.logShut = true
			line = fmt.Sprintf("[agentserver: further stderr of this step dropped after %d bytes]", r.cfg.MaxStepLogBytes)
		}
	}
	r.mu.Unlock()
	if sink != nil {
		sink(line)
		return
	}
	switch {
	case r.mux != nil:
		r.logger.Info("executor stderr", "executor", r.executor, "replica", r.index, "pid", r.pid, "line", line)
	case idle:
		r.logger.Debug("executor stderr while idle", "executor", r.executor, "replica", r.index, "pid", r.pid, "line", line)
	}
}

// oneShot makes single non-blocking system calls on one of a replica's pipes without
// allocating: its RawConn and the functions it hands the RawConn are made once, with the
// replica (a RawConn per call and closures capturing their results cost several
// allocations per run). One goroutine at a time uses it.
type oneShot struct {
	rc      syscall.RawConn
	rcErr   error
	buf     []byte
	scratch [256]byte
	n       int
	err     error
	read    func(fd uintptr) bool
	write   func(fd uintptr) bool
	inq     func(fd uintptr)
}

func newOneShot(f *os.File) *oneShot {
	o := &oneShot{}
	o.rc, o.rcErr = f.SyscallConn()
	// Each tries once and reports done: the caller decides what EAGAIN means.
	o.read = func(fd uintptr) bool { o.n, o.err = rawRead(fd, o.buf); return true }
	o.write = func(fd uintptr) bool { o.n, o.err = rawWrite(fd, o.buf); return true }
	o.inq = func(fd uintptr) { o.n, o.err = rawPending(fd) }
	return o
}

// rawRead, rawWrite and rawPending are read(2), write(2) and ioctl(FIONREAD) on a
// replica's pipes, which are non-blocking: none of them ever waits, so they are made as
// raw system calls, without telling Go's scheduler (syscall.Read and friends mark the
// goroutine's P as in a system call, and the scheduler's monitor thread, sysmon, which
// hands such a P to another thread once a call lasts a tick, keeps waking every 20 µs
// while it finds some: 4.7 % of the all-in-one server's CPU samples in a burn-down, 3.6 %
// with these calls raw, and the server's CPU per run −2 µs). On error they return -1 and
// the errno, as syscall.Read does.
func rawRead(fd uintptr, p []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

func rawWrite(fd uintptr, p []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// rawPending returns how many bytes wait in the pipe (TIOCINQ is FIONREAD on Linux).
func rawPending(fd uintptr) (int, error) {
	var n int32
	_, _, e := unix.RawSyscall(unix.SYS_IOCTL, fd, unix.TIOCINQ, uintptr(unsafe.Pointer(&n)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// tryRead reads what is there now into the scratch buffer: n < 0 with EAGAIN when nothing
// is, 0 at the end of the pipe.
func (o *oneShot) tryRead() (data []byte, n int, err error) {
	if o.rcErr != nil {
		return nil, -1, o.rcErr
	}
	o.buf, o.n, o.err = o.scratch[:], -1, nil
	if err := o.rc.Read(o.read); err != nil {
		return nil, -1, err
	}
	o.buf = nil
	return o.scratch[:max(o.n, 0)], o.n, o.err
}

// tryWrite writes as much of p as fits now.
func (o *oneShot) tryWrite(p []byte) (n int, err error) {
	if o.rcErr != nil {
		return 0, o.rcErr
	}
	o.buf, o.n, o.err = p, 0, nil
	if err := o.rc.Write(o.write); err != nil {
		o.buf = nil
		return 0, err
	}
	o.buf = nil
	return o.n, o.err
}

// pending returns how many bytes wait in the pipe (0 when that cannot be told).
func (o *oneShot) pending() int {
	if o.rcErr != nil {
		return 0
	}
	o.n, o.err = 0, nil
	if err := o.rc.Control(o.inq); err != nil || o.err != nil {
		return 0
	}
	return o.n
}

// trackedReader reads a replica's stdout or stderr through the pipe's RawConn (waiting in
// Go's poller, reading with rawRead), and lets settleStderr tell when everything read
// from stderr was handed on, without waiting on the reader goroutine.
type trackedReader struct {
	name string
	// pipe is the pipe's oneShot: the reader uses its RawConn only (safe beside the
	// oneShot's own calls, which settleStderr makes on stderr and reusable on stdout).
	pipe *oneShot
	// holding is set before each read of the pipe and cleared when that read found it
	// empty, or when the reader asks for more: bufio reads again only once it has no whole
	// line left, so every line read so far was handed on. While it is clear, the pipe's
	// bytes that are gone were handed on.
	holding atomic.Bool
	buf     []byte
	n       int
	err     error
	read    func(fd uintptr) bool
}

func newTrackedReader(pipe *oneShot, name string) *trackedReader {
	t := &trackedReader{name: name, pipe: pipe}
	t.read = func(fd uintptr) bool {
		t.holding.Store(true)
		for {
			t.n, t.err = rawRead(fd, t.buf)
			if t.err != syscall.EINTR {
				break
			}
		}
		if t.err == syscall.EAGAIN {
			t.holding.Store(false)
			return false // the poller waits for more
		}
		return true
	}
	return t
}

func (t *trackedReader) Read(p []byte) (int, error) {
	t.holding.Store(false)
	if t.pipe.rcErr != nil {
		return 0, t.pipe.rcErr
	}
	t.buf = p
	err := t.pipe.rc.Read(t.read)
	t.buf = nil
	switch {
	case err != nil:
		return 0, err
	case t.err != nil:
		return 0, &os.PathError{Op: "read", Path: t.name, Err: t.err}
	case t.n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return t.n, nil
}

// settled reports whether every byte taken from the pipe so far was handed on and none
// waits in it. In this order: the pipe first, then holding (a read after the FIONREAD
// took only bytes written after it).
func (t *trackedReader) settled() bool {
	return t.pipe.pending() == 0 && !t.holding.Load()
}

// settleStderr waits, briefly, until the stderr reader has handed on every line the replica
// wrote before its answer. stdout and stderr are separate pipes, so without this the last log
// lines of a step (often the interesting ones) could arrive after the run has moved on. It is
// best effort: at most settleTimeout.
//
// What the replica wrote to stderr before its answer is, once the answer was read, either
// still in the pipe or taken from it by a read of the reader, which set holding before it
// read. So an empty pipe, and holding clear after that, mean it was all handed on: one
// system call (FIONREAD) in the common case, and no wait for the reader to be scheduled.
func (r *replica) settleStderr() {
	deadline := time.Now().Add(settleTimeout)
	for {
		select {
		case <-r.stderrDone:
			return
		default:
		}
		if r.errReader.settled() {
			return
		}
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// settleTimeout bounds settleStderr.
const settleTimeout = 100 * time.Millisecond

// stderrTail returns the last stderr lines, oldest first.
func (r *replica) stderrTail() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.tail, "\n")
}

// attach directs stderr to sink for one request and resets the step's log budget.
func (r *replica) attach(sink func(string)) {
	r.mu.Lock()
	r.sink, r.logBytes, r.logShut = sink, 0, false
	r.mu.Unlock()
}

func (r *replica) detach() { r.attach(nil) }

func (r *replica) hasExited() bool {
	select {
	case <-r.exited:
		return true
	default:
		return false
	}
}

func (r *replica) isBroken() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.broken
}

func (r *replica) markBroken() {
	r.mu.Lock()
	r.broken = true
	r.mu.Unlock()
}

// reusable reports whether the replica can take another request. Output it wrote while idle
// (which can never be an answer) makes it unusable; that output is logged. check looks into
// the pipe too (one non-blocking read): the pool does when it hands the replica out, so
// that a stray line is never read as part of the next request's exchange.
func (r *replica) reusable(check bool) bool {
	r.mu.Lock()
	broken := r.broken
	r.mu.Unlock()
	if broken || r.hasExited() {
		return false
	}
	var stray []byte
	if n := r.out.Buffered(); n > 0 {
		stray, _ = r.out.Peek(min(n, 256))
	}
	ended := false
	if stray == nil && check {
		data, n, _ := r.probe.tryRead() // n < 0: nothing there (EAGAIN)
		switch {
		case n > 0:
			stray = data
		case n == 0:
			ended = true // every writer closed stdout: nothing can answer
		}
	}
	switch {
	case stray != nil:
		r.logger.Warn("executor wrote to stdout while idle; replacing it",
			"executor", r.executor, "replica", r.index, "pid", r.pid, "output", snippet(stray))
	case ended:
		r.logger.Warn("executor closed its stdout while idle; replacing it",
			"executor", r.executor, "replica", r.index, "pid", r.pid)
	}
	return stray == nil && !ended
}

// kill kills the replica's process group, reaps the process and releases its pipes. It is
// idempotent and returns once the process is gone.
func (r *replica) kill() {
	r.killOnce.Do(func() {
		r.markBroken()
		_ = syscall.Kill(-r.pid, syscall.SIGKILL)
		<-r.exited
		// Closing the read ends also frees readers blocked on a pipe that a process which
		// escaped the group (setsid) still holds open.
		closeAll(r.stdin, r.stdout, r.stderr)
	})
}

// exitFailure describes the replica's death, with the last lines of its stderr.
func (r *replica) exitFailure() *failure {
	// Its group is dead, so stderr ends promptly unless something escaped the group.
	select {
	case <-r.stderrDone:
	case <-time.After(r.cfg.ExitGrace):
	}
	var how string
	st := r.exitState
	switch ws, ok := st.Sys().(syscall.WaitStatus); {
	case ok && ws.Signaled():
		how = fmt.Sprintf("was killed by signal %d (%v)", int(ws.Signal()), ws.Signal())
	default:
		how = fmt.Sprintf("exited with status %d", st.ExitCode())
	}
	msg := fmt.Sprintf("executor %q %s", r.executor, how)
	switch {
	case r.oomKilled:
		msg += fmt.Sprintf(" (it exceeded its memory limit, resources.memory, of %s and was killed)", flow.FormatQuantity(r.memLimit))
	case r.memLimit > 0:
		msg += fmt.Sprintf(" (its memory limit, resources.memory, is %s: allocations beyond it fail)", flow.FormatQuantity(r.memLimit))
	}
	if tail := r.stderrTail(); tail != "" {
		msg += ": " + tail
	}
	// A crash may well be transient (out of memory, a flaky dependency): let the caller retry.
	return &failure{msg: msg, retryable: true}
}

// protocolFailure kills the replica for breaking protocol v1 and describes what it did.
func (r *replica) protocolFailure(err error) *failure {
	r.kill()
	return &failure{msg: fmt.Sprintf("executor %q broke protocol v1: %v", r.executor, err)}
}

// writeRequest writes a request line to the executor's stdin. The executor read its
// previous request before answering it, so the pipe nearly always has room for the next:
// one non-blocking write, on the caller's goroutine, writes it whole, and written is nil.
// What does not fit at once (a request larger than the room left, an executor that stopped
// reading) is written by a goroutine of its own, whose outcome written delivers, so that
// call keeps watching the context and the process meanwhile. (A goroutine per request was
// ~3 % of the all-in-one server's CPU in a burn-down: its start, and the wake-up of call
// when it ended.) err is a write that failed outright (EPIPE: the process is gone).
func (r *replica) writeRequest(buf []byte) (written <-chan error, err error) {
	n, werr := r.in.tryWrite(buf)
	switch {
	case werr == nil && n == len(buf):
		return nil, nil
	case werr != nil && !errors.Is(werr, syscall.EAGAIN) && !errors.Is(werr, syscall.EINTR):
		return nil, werr
	}
	rest := buf[max(n, 0):]
	ch := make(chan error, 1)
	go func() {
		_, err := r.stdin.Write(rest)
		if err != nil {
			r.graceDeadline() // the reader stops waiting for an answer after the grace
		}
		ch <- err
	}()
	return ch, nil
}

// call sends one request and reads the executor's answer on the caller's goroutine, handing
// events to onEvent. It returns a *failure when the executor crashed or broke the protocol
// (the replica is then unusable), or context.Cause(ctx) when ctx ended first (the replica is
// then killed). (A goroutine per replica used to read stdout and hand each line over a
// channel: two goroutine wake-ups per answer instead of one.)
func (r *replica) call(ctx context.Context, req *request, onEvent func(map[string]any)) (*reply, error) {
	buf := req.line()

	written, writeErr := r.writeRequest(buf)
	if writeErr != nil {
		// Most likely the process died before reading its request: its exit, once seen,
		// explains more than EPIPE. Read what it wrote, for at most the grace.
		r.graceDeadline()
	}
	// The context's end interrupts the read. Should it end as the call returns, after the
	// answer, the deadline may land once the replica is back in the pool: never reuse it then.
	interruption := interruptOnEnd(ctx, r)
	defer func() {
		if !interruption.stop() {
			r.markBroken()
		}
	}()

	var total int64
	for {
		line, _, err := readLine(r.out, r.cfg.MaxLineBytes, false)
		if err != nil && !errors.Is(err, errLineTooLong) {
			if writeErr == nil && written != nil {
				select {
				case writeErr = <-written:
				default:
				}
			}
			return nil, r.outputEnded(ctx, err, writeErr)
		}
		if err != nil {
			return nil, r.protocolFailure(&protocolError{
				what: fmt.Sprintf("output line longer than %d bytes", r.cfg.MaxLineBytes), line: line})
		}
		total += int64(len(line)) + 1
		if total > r.cfg.MaxStepOutputBytes {
			return nil, r.protocolFailure(&protocolError{
				what: fmt.Sprintf("more than %d bytes of output for one request", r.cfg.MaxStepOutputBytes)})
		}
		data, rep, err := parseMessage(line, req.ID)
		if err != nil {
			return nil, r.protocolFailure(err)
		}
		if rep == nil {
			onEvent(data)
			continue
		}
		r.settleStderr()
		if written != nil && writeErr == nil {
			// The answer can overtake the report of a write that did complete; a write
			// still blocked after the grace means the request was never read in full.
			select {
			case writeErr = <-written:
			case <-time.After(r.cfg.ExitGrace):
				writeErr = errors.New("request still unread")
			}
		}
		if writeErr != nil {
			// It answered without reading its whole request: the rest would be taken
			// for the next one. Never reuse it.
			r.markBroken()
		}
		return rep, nil
	}
}

// outputEnded explains why stdout gave no answer: err ended the read (the end of stdout, or
// the read deadline of an ended context, an exit or a failed write). It leaves the replica
// killed or marked broken.
func (r *replica) outputEnded(ctx context.Context, err, writeErr error) error {
	if ctx.Err() != nil {
		r.kill()
		return context.Cause(ctx)
	}
	if errors.Is(err, io.EOF) {
		// stdout closed: the process is probably exiting; give it a moment.
		t := time.NewTimer(r.cfg.ExitGrace)
		defer t.Stop()
		select {
		case <-r.exited:
		case <-t.C:
		case <-ctx.Done():
			r.kill()
			return context.Cause(ctx)
		}
	}
	if r.hasExited() {
		r.markBroken()
		return r.exitFailure()
	}
	r.kill()
	switch {
	case writeErr != nil:
		return &failure{msg: fmt.Sprintf("executor %q: writing request: %v", r.executor, writeErr), retryable: true}
	case errors.Is(err, io.EOF):
		return &failure{msg: fmt.Sprintf("executor %q closed its stdout", r.executor)}
	case errors.Is(err, os.ErrDeadlineExceeded):
		// Only an exit or a failed write sets a deadline while the context lives.
		return &failure{msg: fmt.Sprintf("executor %q: no answer within %s of its request's failure", r.executor, r.cfg.ExitGrace), retryable: true}
	}
	return &failure{msg: fmt.Sprintf("executor %q: reading stdout: %v", r.executor, err)}
}
