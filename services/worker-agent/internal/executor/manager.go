// Package executor runs the flow of a run on a worker through executor processes that speak
// executor protocol v1 (JSON lines on stdin/stdout, one request at a time per replica;
// DESIGN.md §6), or, for an executor whose flow declares `concurrency: N`, N at once,
// answered by id (mux.go).
//
// It owns the executor replicas (long-lived processes, each in its own process group, pooled per
// flow and executor, reused across steps and runs, started on demand, expired when idle, killed
// with their whole group), the protocol itself with its bounds, and the sequencing of one run's
// steps: next routing, map fan-out over replicas, the max_steps guard and the checkpoint after
// every step.
//
// It must never talk to the scheduler, a database or the network, decide placement, retries or
// a run's final status, or let executor output reach anything but the caller's callbacks: the
// caller owns durability (OnCheckpoint is its fenced write) and what an Outcome means.
package executor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentserver/agentserver/pkg/flow"
)

// Defaults of Config.
const (
	DefaultMaxConcurrency     = 4
	DefaultIdleTimeout        = 5 * time.Minute
	DefaultMaxLineBytes       = 1 << 20
	DefaultMaxStepOutputBytes = 16 << 20
	DefaultMaxLogLineBytes    = 8 << 10
	DefaultMaxStepLogBytes    = 1 << 20
	DefaultStderrTailLines    = 10
	DefaultExitGrace          = 2 * time.Second
)

// ErrClosed is returned by pool operations once the Manager is closed.
var ErrClosed = errors.New("executor manager is closed")

// Config configures a Manager. Zero fields take the defaults above.
type Config struct {
	// Dir is the worker's working directory: replicas start there, joined with their
	// executor's workdir. Default: the process's working directory.
	Dir string
	// Env is the worker environment every replica starts with. Default: os.Environ().
	Env []string
	// MaxConcurrency caps the replicas of an elastic executor (one without `replicas`); it is
	// the worker's slot count. Default DefaultMaxConcurrency.
	MaxConcurrency int
	// IdleTimeout is how long a replica stays warm without a request before it is killed; a
	// pool with no replicas left is dropped. Default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxLineBytes bounds one stdout line of protocol; a longer one is a protocol error.
	MaxLineBytes int
	// MaxStepOutputBytes bounds the stdout one request may produce.
	MaxStepOutputBytes int64
	// MaxLogLineBytes bounds one stderr line handed to OnLog; longer lines are cut.
	MaxLogLineBytes int
	// MaxStepLogBytes bounds the stderr of one request handed to OnLog; the rest is dropped
	// with one notice.
	MaxStepLogBytes int64
	// StderrTailLines is how many last stderr lines describe a replica that exited.
	StderrTailLines int
	// ExitGrace is how long to wait for the last output of a replica that exited or closed its
	// stdout before giving up on it.
	ExitGrace time.Duration
	// Logger receives what belongs to no run (stderr of idle replicas, replicas replaced).
	// Default: slog.Default().
	Logger *slog.Logger
	// CgroupDir, when set, is a delegated cgroup v2 directory (memory controller enabled
	// for its children): resources.memory is then enforced by a cgroup per replica.
	// Otherwise it is an address-space rlimit.
	CgroupDir string
}

func (c *Config) setDefaults() error {
	if c.Dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return fmt.Errorf("finding the working directory: %w", err)
		}
		c.Dir = wd
	}
	if st, err := os.Stat(c.Dir); err != nil {
		return fmt.Errorf("executor working directory: %w", err)
	} else if !st.IsDir() {
		return fmt.Errorf("executor working directory %s is not a directory", c.Dir)
	}
	if c.Env == nil {
		c.Env = os.Environ()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return errors.Join(
		defaulted("MaxConcurrency", &c.MaxConcurrency, DefaultMaxConcurrency),
		defaulted("IdleTimeout", &c.IdleTimeout, DefaultIdleTimeout),
		defaulted("MaxLineBytes", &c.MaxLineBytes, DefaultMaxLineBytes),
		defaulted("MaxStepOutputBytes", &c.MaxStepOutputBytes, DefaultMaxStepOutputBytes),
		defaulted("MaxLogLineBytes", &c.MaxLogLineBytes, DefaultMaxLogLineBytes),
		defaulted("MaxStepLogBytes", &c.MaxStepLogBytes, DefaultMaxStepLogBytes),
		defaulted("StderrTailLines", &c.StderrTailLines, DefaultStderrTailLines),
		defaulted("ExitGrace", &c.ExitGrace, DefaultExitGrace),
	)
}

// defaulted sets *v to def when it is zero and refuses negative values.
func defaulted[T int | int64 | time.Duration](name string, v *T, def T) error {
	if *v < 0 {
		return fmt.Errorf("executor config: %s must not be negative", name)
	}
	if *v == 0 {
		*v = def
	}
	return nil
}

// Manager owns every executor replica of a worker and runs flows through them. It is safe for
// concurrent use; one Manager serves all the runs of a worker.
type Manager struct {
	cfg    Config
	logger *slog.Logger
	seq    atomic.Uint64

	mu    sync.Mutex
	pools map[string]*pool
	// keys caches poolKey's answers: hashing an executor definition costs more than the
	// rest of a no-op step's bookkeeping.
	keys   map[keyOf]string
	closed chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

// NewManager returns a Manager with cfg's defaults filled in and starts its idle reaper.
func NewManager(cfg Config) (*Manager, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:    cfg,
		logger: cfg.Logger.With("component", "executor"),
		pools:  map[string]*pool{},
		closed: make(chan struct{}),
	}
	m.wg.Add(1)
	go m.reapIdle()
	return m, nil
}

// Close kills every replica (with its process group) and stops the Manager; runs still in
// flight fail. It waits for the processes to be reaped and always returns nil.
func (m *Manager) Close() error {
	m.once.Do(func() {
		close(m.closed)
		m.wg.Wait()
		m.mu.Lock()
		pools := slices.Collect(maps.Values(m.pools))
		m.pools = map[string]*pool{}
		m.mu.Unlock()
		var wg sync.WaitGroup
		for _, p := range pools {
			for _, r := range p.closeAll() {
				wg.Go(r.kill)
			}
		}
		wg.Wait()
	})
	return nil
}

func (m *Manager) isClosed() bool {
	select {
	case <-m.closed:
		return true
	default:
		return false
	}
}

// reapIdle kills replicas idle for longer than IdleTimeout and drops empty, unused pools.
func (m *Manager) reapIdle() {
	defer m.wg.Done()
	interval := min(max(m.cfg.IdleTimeout/4, 10*time.Millisecond), 30*time.Second)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-m.closed:
			return
		case now := <-t.C:
			m.mu.Lock()
			pools := slices.Collect(maps.Values(m.pools))
			m.mu.Unlock()
			for _, p := range pools {
				for _, r := range p.expire(now.Add(-m.cfg.IdleTimeout)) {
					r.kill()
				}
			}
			m.mu.Lock()
			for key, p := range m.pools {
				if p.empty() {
					delete(m.pools, key)
				}
			}
			m.mu.Unlock()
		}
	}
}

// keyOf identifies a poolKey computation: a parsed flow is never modified, so its
// executor definitions, and the key derived from one with an environment, never change.
type keyOf struct {
	flow     *flow.Flow
	flowKey  string
	executor string
	envLen   int
	env      string // the environment's entries joined by NUL, which none can contain
}

// maxCachedKeys bounds Manager.keys; the cache starts over when it is full.
const maxCachedKeys = 1024

// poolKey returns the key of the pool of f's executor def under flowKey and extraEnv. It
// covers the definition and the caller's env, so that a replica is only ever reused by
// requests that would have started it identically (same GPU, same command). Call with m.mu
// held.
func (m *Manager) poolKey(f *flow.Flow, flowKey string, def flow.Executor, extraEnv []string) string {
	ko := keyOf{flow: f, flowKey: flowKey, executor: def.Name, envLen: len(extraEnv)}
	switch len(extraEnv) {
	case 0:
	case 1:
		ko.env = extraEnv[0]
	default:
		ko.env = strings.Join(extraEnv, "\x00")
	}
	if key, ok := m.keys[ko]; ok {
		return key
	}
	h := sha256.New()
	_ = json.NewEncoder(h).Encode(struct {
		Def flow.Executor
		Env []string
	}{def, extraEnv})
	key := flowKey + "\x00" + def.Name + "\x00" + hex.EncodeToString(h.Sum(nil))
	if m.keys == nil || len(m.keys) >= maxCachedKeys {
		m.keys = make(map[keyOf]string)
	}
	m.keys[ko] = key
	return key
}

// pool returns the pool for f's executor def under flowKey and extraEnv, registering one
// more user; call release when done with it.
func (m *Manager) pool(f *flow.Flow, flowKey string, def flow.Executor, extraEnv []string) (*pool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.isClosed() {
		return nil, ErrClosed
	}
	key := m.poolKey(f, flowKey, def, extraEnv)
	p := m.pools[key]
	if p == nil {
		// An elastic executor gets as many replicas as the worker's slots need: one per
		// slot, or one per concurrency requests.
		per := def.RequestsPerReplica()
		replicas := def.Replicas
		if replicas == 0 {
			replicas = (m.cfg.MaxConcurrency + per - 1) / per
		}
		p = &pool{
			m:        m,
			def:      def,
			flowKey:  flowKey,
			extraEnv: slices.Clone(extraEnv),
			limit:    replicas * per,
			per:      per,
			sem:      make(chan struct{}, replicas*per),
			live:     map[*replica]struct{}{},
			used:     make([]bool, replicas),
		}
		m.pools[key] = p
	}
	p.mu.Lock()
	p.users++
	p.mu.Unlock()
	return p, nil
}

// pool is the replicas of one executor of one flow (and one caller environment).
type pool struct {
	m        *Manager
	def      flow.Executor
	flowKey  string
	extraEnv []string
	// limit is the most requests in flight: replicas × per.
	limit int
	// per is the requests one replica takes at once (the executor's concurrency): above 1
	// the replicas are shared (mux.go) and idle holds none of them.
	per int
	// sem holds one token per request in flight: at most limit at once.
	sem chan struct{}
	// starting, while shared replicas start (startingN of them), is closed when a start
	// ends: requests that find every replica full or starting wait for it (guarded by mu).
	starting  chan struct{}
	startingN int

	mu     sync.Mutex
	idle   []*replica // most recently used last
	live   map[*replica]struct{}
	used   []bool // replica indexes held by live replicas
	users  int    // Run calls holding the pool
	closed bool
}

// release gives back a reference taken by Manager.pool.
func (p *pool) release() {
	p.mu.Lock()
	p.users--
	p.mu.Unlock()
}

// empty reports whether the pool has neither users nor replicas (and can be dropped).
func (p *pool) empty() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.users == 0 && len(p.live) == 0
}

// acquire returns a replica for one request, reusing a warm one or starting one (for run,
// with stderr going to sink). It waits while limit requests are in flight.
func (p *pool) acquire(ctx context.Context, run string, sink func(string)) (*replica, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-p.m.closed:
		return nil, ErrClosed
	}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			<-p.sem
			return nil, ErrClosed
		}
		if p.per > 1 {
			// The live replica of the lowest index with room: requests gather on few
			// replicas, so that each write and read carries several. One that broke (a
			// failed write) is let go: its reader ends what it holds.
			var pick *replica
			for r := range p.live {
				if r.isBroken() {
					p.forgetLocked(r)
					continue
				}
				if r.load < p.per && (pick == nil || r.index < pick.index) {
					pick = r
				}
			}
			if pick != nil {
				pick.load++
				p.mu.Unlock()
				return pick, nil
			}
		} else if n := len(p.idle); n > 0 {
			r := p.idle[n-1]
			p.idle = p.idle[:n-1]
			p.mu.Unlock()
			if !r.reusable(true) {
				p.discard(r)
				continue
			}
			r.attach(sink)
			return r, nil
		}
		// Fewer than limit replicas are live (we hold a token and none is idle), so an index
		// is free.
		index := slices.Index(p.used, false)
		if index < 0 && p.starting != nil {
			// Every replica is full or starting (shared replicas): wait for a start to end,
			// then look again.
			started := p.starting
			p.mu.Unlock()
			select {
			case <-started:
				continue
			case <-ctx.Done():
				<-p.sem
				return nil, context.Cause(ctx)
			}
		}
		if index < 0 {
			p.mu.Unlock()
			<-p.sem
			return nil, errors.New("no free replica index (bug: pool accounting)")
		}
		p.used[index] = true
		if p.per > 1 {
			if p.startingN++; p.starting == nil {
				p.starting = make(chan struct{})
			}
		}
		p.mu.Unlock()

		if p.per > 1 {
			sink = nil // a shared replica's stderr belongs to no one request
		}
		r, err := startReplica(&p.m.cfg, p.m.logger, p.def, index, p.env(index, run), sink, p.per > 1)
		p.mu.Lock()
		if p.per > 1 {
			close(p.starting)
			p.starting = nil
			if p.startingN--; p.startingN > 0 {
				p.starting = make(chan struct{})
			}
		}
		if err != nil {
			p.used[index] = false
			p.mu.Unlock()
			<-p.sem
			return nil, err
		}
		if p.closed {
			p.used[index] = false
			p.mu.Unlock()
			r.kill()
			<-p.sem
			return nil, ErrClosed
		}
		p.live[r] = struct{}{}
		if p.per > 1 {
			r.load = 1
			r.startMux(func() { p.releaseMux(r) }, func() { p.forget(r) })
		}
		p.mu.Unlock()
		p.m.logger.Debug("executor replica started", "flow", p.flowKey, "executor", p.def.Name,
			"replica", index, "pid", r.pid, "run", run)
		return r, nil
	}
}

// env is the environment of a new replica: the worker's, the executor's, the caller's, then the
// variables protocol v1 promises (last, so that nothing overrides them).
func (p *pool) env(index int, run string) []string {
	env := slices.Clone(p.m.cfg.Env)
	for _, k := range slices.Sorted(maps.Keys(p.def.Env)) {
		env = append(env, k+"="+p.def.Env[k])
	}
	env = append(env, p.extraEnv...)
	return append(env,
		"AGENTSERVER_EXECUTOR="+p.def.Name,
		"AGENTSERVER_REPLICA="+strconv.Itoa(index),
		"AGENTSERVER_RUN="+run,
	)
}

// put returns a replica after a request: warm for the next one when it is healthy, killed
// otherwise.
func (p *pool) put(r *replica) {
	r.detach()
	if r.reusable(false) {
		p.mu.Lock()
		if !p.closed {
			r.lastUsed = time.Now()
			p.idle = append(p.idle, r)
			p.mu.Unlock()
			<-p.sem
			return
		}
		p.mu.Unlock()
	}
	p.discard(r)
	<-p.sem
}

// releaseMux gives back one request's hold of a shared replica.
func (p *pool) releaseMux(r *replica) {
	p.mu.Lock()
	if r.load--; r.load == 0 {
		r.lastUsed = time.Now()
	}
	p.mu.Unlock()
	<-p.sem
}

// putMux ends a request on a shared replica. An abandoned one keeps its hold until the
// executor answers it (readMux releases it). A replica left holding abandoned requests
// only is killed, which releases them: it answers nobody, and what it still works on
// (perhaps hung) must not take a place of the pool forever.
func (p *pool) putMux(r *replica, abandoned bool) {
	if !abandoned {
		p.releaseMux(r)
	}
	p.mu.Lock()
	n := r.abandonedRequests()
	only := n > 0 && r.load == n
	if only {
		// Out of the pool before anyone else can take it.
		p.forgetLocked(r)
	}
	p.mu.Unlock()
	if only {
		r.kill()
	}
}

// discard forgets a replica and kills it.
func (p *pool) discard(r *replica) {
	p.forget(r)
	r.kill()
}

func (p *pool) forget(r *replica) {
	p.mu.Lock()
	p.forgetLocked(r)
	p.mu.Unlock()
}

func (p *pool) forgetLocked(r *replica) {
	if _, ok := p.live[r]; ok {
		delete(p.live, r)
		p.used[r.index] = false
	}
}

// expire removes and returns the idle replicas last used before cutoff, and dead ones.
func (p *pool) expire(cutoff time.Time) []*replica {
	p.mu.Lock()
	defer p.mu.Unlock()
	var victims []*replica
	if p.per > 1 {
		for r := range p.live {
			if r.load == 0 && (r.lastUsed.Before(cutoff) || r.hasExited()) {
				victims = append(victims, r)
				p.forgetLocked(r)
			}
		}
		return victims
	}
	keep := p.idle[:0]
	for _, r := range p.idle {
		if r.lastUsed.Before(cutoff) || r.hasExited() {
			victims = append(victims, r)
			p.forgetLocked(r)
			continue
		}
		keep = append(keep, r)
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	return victims
}

// closeAll marks the pool closed and returns every live replica, idle or busy, to be killed.
func (p *pool) closeAll() []*replica {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	victims := slices.Collect(maps.Keys(p.live))
	p.idle = nil
	return victims
}
