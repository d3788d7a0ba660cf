package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// DefaultStopTimeout is how long Process waits for a worker to drain after SIGTERM. It is
// longer than the worker-agent's default drain grace (30s), which bounds the drain.
const DefaultStopTimeout = 2 * time.Minute

// Environment variables Process sets on every process it starts.
const (
	// EnvPool names the pool of the process.
	EnvPool = "AUTOSCALER_POOL"
	// EnvReplica is the process's replica index in its pool, the lowest one free when it
	// started (0, 1, ...): stable enough to derive a port or a worker id from.
	EnvReplica = "AUTOSCALER_REPLICA"
)

// ProcessPool says how to start the worker processes of one pool.
type ProcessPool struct {
	// Binary is the program (e.g. the worker-agent), looked up in PATH when it has no slash.
	Binary string
	// Args are its arguments.
	Args []string
	// Env is added to the autoscaler's environment ("KEY=value", e.g. "WORKER_POOL=gpu").
	Env []string
	// Dir is the working directory; empty for the autoscaler's own.
	Dir string
}

// ProcessConfig configures a Process driver.
type ProcessConfig struct {
	// Pools maps pool names to how their workers start.
	Pools map[string]ProcessPool
	// StopTimeout bounds the drain of one worker after SIGTERM; it is then killed.
	// Zero means DefaultStopTimeout.
	StopTimeout time.Duration
	// Output receives the workers' standard output and error; nil means os.Stderr.
	Output io.Writer
	// Logger reports workers that exit on their own; nil discards.
	Logger *slog.Logger
}

// Process runs each pool's workers as local child processes: single host, and tests.
// Scale-down sends SIGTERM to the newest workers (the worker-agent then drains: it takes
// no more work, finishes or hands back its runs and exits 0) and waits for them to exit,
// killing one only after StopTimeout. A worker that exits on its own stops being
// counted, so the policy's min_replicas rule replaces it.
//
// Workers are started in their own process group (a terminal's Ctrl-C reaches only the
// autoscaler, which drains them in order) and, on Linux, get SIGTERM should the
// autoscaler die. Call Shutdown before exiting to drain them all.
type Process struct {
	cfg   ProcessConfig
	log   *slog.Logger
	pools map[string]*processPool
}

type processPool struct {
	name  string
	spec  ProcessPool
	scale sync.Mutex // one Scale at a time per pool

	mu    sync.Mutex
	procs []*worker // in start order
	seq   uint64
}

// worker is one child process.
type worker struct {
	cmd      *exec.Cmd
	replica  int
	seq      uint64
	done     chan struct{} // closed once the process has been waited for
	err      error         // from Wait, valid after done
	stopping bool
}

// NewProcess returns a Process driver; nothing starts until Scale.
func NewProcess(cfg ProcessConfig) (*Process, error) {
	if len(cfg.Pools) == 0 {
		return nil, errors.New("process driver: no pools configured")
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	if cfg.StopTimeout < 0 {
		return nil, fmt.Errorf("process driver: stop_timeout must be >= 0 (got %s)", cfg.StopTimeout)
	}
	if cfg.Output == nil {
		cfg.Output = os.Stderr
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Process{cfg: cfg, log: log, pools: map[string]*processPool{}}
	for name, spec := range cfg.Pools {
		if spec.Binary == "" {
			return nil, fmt.Errorf("process driver: pools.%s.binary: required", name)
		}
		p.pools[name] = &processPool{name: name, spec: spec}
	}
	return p, nil
}

func (p *Process) pool(name string) (*processPool, error) {
	pp, ok := p.pools[name]
	if !ok {
		return nil, fmt.Errorf("process driver: %q: %w", name, ErrUnknownPool)
	}
	return pp, nil
}

// Current implements Driver.
func (p *Process) Current(_ context.Context, pool string) (int, error) {
	pp, err := p.pool(pool)
	if err != nil {
		return 0, err
	}
	pp.mu.Lock()
	defer pp.mu.Unlock()
	n := 0
	for _, w := range pp.procs {
		if !w.stopping {
			n++
		}
	}
	return n, nil
}

// PIDs returns the process ids of pool's running workers, oldest first, those being
// drained excluded.
func (p *Process) PIDs(pool string) []int {
	pp, err := p.pool(pool)
	if err != nil {
		return nil
	}
	pp.mu.Lock()
	defer pp.mu.Unlock()
	var out []int
	for _, w := range pp.procs {
		if !w.stopping {
			out = append(out, w.cmd.Process.Pid)
		}
	}
	return out
}

// Scale implements Driver. Scaling up starts the missing workers; scaling down drains
// the newest ones and waits for them (their drain goes on if ctx ends first).
func (p *Process) Scale(ctx context.Context, pool string, n int) error {
	if n < 0 {
		return fmt.Errorf("process driver: %s: negative replica count %d", pool, n)
	}
	pp, err := p.pool(pool)
	if err != nil {
		return err
	}
	pp.scale.Lock()
	defer pp.scale.Unlock()

	pp.mu.Lock()
	var live []*worker
	for _, w := range pp.procs {
		if !w.stopping {
			live = append(live, w)
		}
	}
	if n > len(live) {
		missing := n - len(live)
		pp.mu.Unlock()
		for range missing {
			if err := p.start(pp); err != nil {
				return err
			}
		}
		return nil
	}
	// Newest first: they have the least work in flight on average, and a fresh worker
	// that has not registered yet is the cheapest to give back.
	victims := slices.Clone(live[n:])
	slices.Reverse(victims)
	for _, w := range victims {
		w.stopping = true
	}
	pp.mu.Unlock()
	return p.drain(ctx, pp, victims)
}

// start launches one worker of pp.
func (p *Process) start(pp *processPool) error {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	used := map[int]bool{}
	for _, w := range pp.procs {
		used[w.replica] = true
	}
	replica := 0
	for used[replica] {
		replica++
	}
	cmd := exec.Command(pp.spec.Binary, pp.spec.Args...)
	cmd.Dir = pp.spec.Dir
	cmd.Env = append(cmd.Environ(), pp.spec.Env...)
	cmd.Env = append(cmd.Env, EnvPool+"="+pp.name, EnvReplica+"="+strconv.Itoa(replica))
	cmd.Stdout, cmd.Stderr = p.cfg.Output, p.cfg.Output
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("process driver: starting %s worker (%s): %w", pp.name, pp.spec.Binary, err)
	}
	pp.seq++
	w := &worker{cmd: cmd, replica: replica, seq: pp.seq, done: make(chan struct{})}
	pp.procs = append(pp.procs, w)
	go p.wait(pp, w)
	return nil
}

// wait reaps w and forgets it.
func (p *Process) wait(pp *processPool, w *worker) {
	w.err = w.cmd.Wait()
	pp.mu.Lock()
	pp.procs = slices.DeleteFunc(pp.procs, func(x *worker) bool { return x == w })
	stopping := w.stopping
	pp.mu.Unlock()
	close(w.done)
	if !stopping {
		p.log.Warn("worker exited on its own", "pool", pp.name, "replica", w.replica,
			"pid", w.cmd.Process.Pid, "err", w.err)
	}
}

// drain sends SIGTERM to every victim and waits for each to exit, killing those that
// outlive the stop timeout.
func (p *Process) drain(ctx context.Context, pp *processPool, victims []*worker) error {
	errs := make([]error, len(victims))
	var wg sync.WaitGroup
	for i, w := range victims {
		wg.Go(func() { errs[i] = p.stop(ctx, pp, w) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (p *Process) stop(ctx context.Context, pp *processPool, w *worker) error {
	pid := w.cmd.Process.Pid
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("process driver: %s replica %d (pid %d): SIGTERM: %w", pp.name, w.replica, pid, err)
	}
	timer := time.NewTimer(p.cfg.StopTimeout)
	defer timer.Stop()
	select {
	case <-w.done:
	case <-ctx.Done():
		return fmt.Errorf("process driver: %s replica %d (pid %d) still draining: %w", pp.name, w.replica, pid, ctx.Err())
	case <-timer.C:
		_ = w.cmd.Process.Kill()
		<-w.done
		return fmt.Errorf("process driver: %s replica %d (pid %d) did not exit within %s of SIGTERM; killed (its runs return to the queue when their leases expire)",
			pp.name, w.replica, pid, p.cfg.StopTimeout)
	}
	var exit *exec.ExitError
	if errors.As(w.err, &exit) {
		return fmt.Errorf("process driver: %s replica %d (pid %d) exited after SIGTERM: %w", pp.name, w.replica, pid, w.err)
	}
	return w.err
}

// Shutdown drains every worker of every pool, as a scale to zero would. Workers that
// ctx leaves no time for are killed.
func (p *Process) Shutdown(ctx context.Context) error {
	names := make([]string, 0, len(p.pools))
	for name := range p.pools {
		names = append(names, name)
	}
	sort.Strings(names)
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() { errs[i] = p.Scale(ctx, name, 0) })
	}
	wg.Wait()
	for _, pp := range p.pools {
		pp.mu.Lock()
		left := slices.Clone(pp.procs)
		pp.mu.Unlock()
		for _, w := range left {
			_ = w.cmd.Process.Kill()
			<-w.done
		}
	}
	return errors.Join(errs...)
}
