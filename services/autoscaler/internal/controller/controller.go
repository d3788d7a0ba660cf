// Package controller owns the autoscaler's control loop: every policy interval it reads a
// Snapshot from a MetricsSource, fills in the replica counts its Driver reports, runs the
// policy engine and applies each decision through the driver, recording every decision
// (time, pool, inputs, rule, from → to, outcome) in a bounded history.
//
// It must never decide a count itself (the policy does), never stop a worker other than
// through the driver (which drains first), and never apply two changes to one pool at a
// time: while a pool's change is in flight (a scale-down's drain can take minutes) the
// pool is reported as Scaling and the policy decides nothing for it; other pools go on.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/agentserver/agentserver/services/autoscaler/internal/driver"
	"github.com/agentserver/agentserver/services/autoscaler/internal/policy"
)

// MetricsSource provides what the policy observes. The scheduler's statistics and the
// gateways' latency come in through it.
type MetricsSource interface {
	// Snapshot returns the current observations: for each pool it can observe (by pool
	// name), every PoolMetrics field but Replicas and Scaling, which the controller fills
	// in from the driver; and the gateways' p95 (Gateway nil when unknown; its Replicas
	// is filled in too). A pool left out has no data this time, and the policy makes no
	// decision for it. Time may be left zero: the controller stamps it.
	Snapshot(ctx context.Context) (policy.Snapshot, error)
}

// DefaultHistory is how many decisions the controller keeps.
const DefaultHistory = 1000

// Config configures a Controller.
type Config struct {
	// Policy is the validated scaling policy; its Interval paces the loop.
	Policy policy.Config
	// Source provides the observations.
	Source MetricsSource
	// Driver applies the decisions and reports replica counts.
	Driver driver.Driver
	// Logger receives evaluations' problems and decisions; nil discards.
	Logger *slog.Logger
	// History is how many decisions to keep (oldest dropped first); 0 means DefaultHistory.
	History int
	// Clock tells the time; nil means time.Now. Tests replace it.
	Clock func() time.Time
}

// Outcome is how applying a decision went.
type Outcome string

// Outcomes of a decision.
const (
	// OutcomeApplying: the driver is applying the decision (e.g. draining workers).
	OutcomeApplying Outcome = "applying"
	// OutcomeApplied: the driver reported success.
	OutcomeApplied Outcome = "applied"
	// OutcomeFailed: the driver reported an error (see Record.Error).
	OutcomeFailed Outcome = "failed"
)

// Record is one decision in the history, with how applying it went.
type Record struct {
	policy.Decision
	// ID numbers decisions from 1 in the order they were made.
	ID uint64
	// Outcome of applying the decision.
	Outcome Outcome
	// Error is the driver's error when Outcome is OutcomeFailed.
	Error string
	// Finished is when the driver returned; zero while applying.
	Finished time.Time
}

// PoolStatus is the state of one pool (or of the gateways).
type PoolStatus struct {
	// Pool is the pool's name as the driver knows it.
	Pool string
	// Gateway is true for the gateways' entry.
	Gateway bool
	// MinReplicas from the policy.
	MinReplicas int
	// MaxReplicas from the policy.
	MaxReplicas int
	// Current is the replica count the driver reported at the last evaluation.
	Current int
	// Desired is the count of the last decision, or Current when none was made yet.
	Desired int
	// Scaling is true while a decision for the pool is being applied.
	Scaling bool
	// Metrics are the pool's last observations (Replicas and Scaling included); zero
	// for the gateways, whose latency is in LatencyP95.
	Metrics policy.PoolMetrics
	// LatencyP95 is the gateways' last observed p95.
	LatencyP95 time.Duration
	// Observed is false when the last evaluation had no data for the pool.
	Observed bool
	// LastDecision is the pool's latest decision; nil when none was made.
	LastDecision *Record
	// Error describes why the last evaluation had no data for the pool, if it had none.
	Error string
}

// Status is the controller's state.
type Status struct {
	// LastEvaluation is when the policy last ran; zero before the first evaluation.
	LastEvaluation time.Time
	// Evaluations counts evaluations since start.
	Evaluations uint64
	// Error is the last evaluation's failure (e.g. the metrics source), or empty.
	Error string
	// Pools in policy order, the gateways last.
	Pools []PoolStatus
	// DecisionCounts counts decisions by pool and rule since start.
	DecisionCounts map[string]map[policy.Rule]uint64
}

type poolState struct {
	status PoolStatus
	last   uint64 // ID of the pool's latest decision; 0 when none
}

// Controller runs the control loop. Its methods are safe for concurrent use.
type Controller struct {
	cfg    Config
	log    *slog.Logger
	clock  func() time.Time
	engine *policy.Engine

	// applyCtx bounds the drivers' work; cancelled when Run returns.
	applyCtx    context.Context
	cancelApply context.CancelFunc
	applying    sync.WaitGroup

	evalMu sync.Mutex // one evaluation at a time; guards engine

	mu        sync.Mutex
	ring      []Record // ring[(id-1) % len(ring)] holds decision id
	nextID    uint64
	pools     map[string]*poolState
	order     []string
	lastEval  time.Time
	evals     uint64
	lastError string
	counts    map[string]map[policy.Rule]uint64
}

// New returns a controller; it starts nothing until Run (or Evaluate).
func New(cfg Config) (*Controller, error) {
	if cfg.Source == nil {
		return nil, errors.New("controller: no metrics source configured")
	}
	if cfg.Driver == nil {
		return nil, errors.New("controller: no driver configured")
	}
	engine, err := policy.NewEngine(cfg.Policy)
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if cfg.History == 0 {
		cfg.History = DefaultHistory
	}
	if cfg.History < 0 {
		return nil, fmt.Errorf("controller: history must be >= 0 (got %d)", cfg.History)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	clock := cfg.Clock
	if clock == nil {
		clock = time.Now
	}
	c := &Controller{
		cfg: cfg, log: log, clock: clock, engine: engine,
		ring: make([]Record, cfg.History), pools: map[string]*poolState{},
		counts: map[string]map[policy.Rule]uint64{},
	}
	c.applyCtx, c.cancelApply = context.WithCancel(context.Background())
	for _, p := range cfg.Policy.Pools {
		c.order = append(c.order, p.Name)
		c.pools[p.Name] = &poolState{status: PoolStatus{Pool: p.Name, MinReplicas: p.MinReplicas, MaxReplicas: p.MaxReplicas}}
	}
	if g := cfg.Policy.Gateway; g != nil {
		c.order = append(c.order, g.Name)
		c.pools[g.Name] = &poolState{status: PoolStatus{Pool: g.Name, Gateway: true, MinReplicas: g.MinReplicas, MaxReplicas: g.MaxReplicas}}
	}
	return c, nil
}

// Check asks the driver for every pool's count once, and fails if the driver does not
// know a pool of the policy: a configuration mistake better reported at start.
func (c *Controller) Check(ctx context.Context) error {
	var errs []error
	for _, name := range c.order {
		if _, err := c.cfg.Driver.Current(ctx, name); errors.Is(err, driver.ErrUnknownPool) {
			errs = append(errs, fmt.Errorf("policy pool %q: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Run evaluates the policy at once and then every policy interval until ctx ends. A
// failed evaluation is logged and recorded in Status; the loop goes on. When ctx ends,
// Run cancels the decisions being applied and waits for the driver to return.
func (c *Controller) Run(ctx context.Context) error {
	defer func() {
		c.cancelApply()
		c.applying.Wait()
	}()
	ticker := time.NewTicker(c.cfg.Policy.Interval)
	defer ticker.Stop()
	for {
		if _, err := c.Evaluate(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("evaluation failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// Evaluate runs one evaluation: observe, decide, and start applying the decisions
// (asynchronously: Status shows a pool as Scaling until its driver returns). It returns
// the decisions made. When the source fails, the policy observes an empty snapshot, so
// every sustained window restarts: a gap in the data never counts as "sustained".
func (c *Controller) Evaluate(ctx context.Context) ([]Record, error) {
	c.evalMu.Lock()
	defer c.evalMu.Unlock()

	snap, srcErr := c.cfg.Source.Snapshot(ctx)
	now := c.clock()
	if srcErr != nil {
		snap = policy.Snapshot{}
	}
	if snap.Time.IsZero() {
		snap.Time = now
	}
	if snap.Pools == nil {
		snap.Pools = map[string]policy.PoolMetrics{}
	}
	poolErr := map[string]string{}
	for _, p := range c.cfg.Policy.Pools {
		m, ok := snap.Pools[p.Name]
		if !ok {
			if srcErr == nil {
				poolErr[p.Name] = "no metrics for this pool"
			}
			continue
		}
		cur, err := c.cfg.Driver.Current(ctx, p.Name)
		if err != nil {
			delete(snap.Pools, p.Name)
			poolErr[p.Name] = fmt.Sprintf("driver: %v", err)
			continue
		}
		m.Replicas, m.Scaling = cur, c.isScaling(p.Name)
		snap.Pools[p.Name] = m
	}
	if g := c.cfg.Policy.Gateway; g != nil {
		if snap.Gateway == nil {
			if srcErr == nil {
				poolErr[g.Name] = "no gateway latency"
			}
		} else if cur, err := c.cfg.Driver.Current(ctx, g.Name); err != nil {
			snap.Gateway = nil
			poolErr[g.Name] = fmt.Sprintf("driver: %v", err)
		} else {
			gm := *snap.Gateway
			gm.Replicas, gm.Scaling = cur, c.isScaling(g.Name)
			snap.Gateway = &gm
		}
	}
	if srcErr != nil {
		for _, name := range c.order {
			poolErr[name] = fmt.Sprintf("metrics source: %v", srcErr)
		}
	}

	decisions := c.engine.Evaluate(snap)

	c.mu.Lock()
	c.lastEval, c.evals = snap.Time, c.evals+1
	c.lastError = ""
	if srcErr != nil {
		c.lastError = fmt.Sprintf("metrics source: %v", srcErr)
	}
	for _, name := range c.order {
		st := &c.pools[name].status
		st.Error = poolErr[name]
		st.Observed = st.Error == ""
		if m, ok := snap.Pools[name]; ok {
			st.Metrics, st.Current = m, m.Replicas
		}
		if st.Gateway && snap.Gateway != nil {
			st.LatencyP95, st.Current = snap.Gateway.P95, snap.Gateway.Replicas
		}
		if st.Observed && c.pools[name].last == 0 {
			st.Desired = st.Current
		}
	}
	records := make([]Record, 0, len(decisions))
	for _, d := range decisions {
		c.nextID++
		r := Record{Decision: d, ID: c.nextID, Outcome: OutcomeApplying}
		if len(c.ring) > 0 {
			c.ring[(r.ID-1)%uint64(len(c.ring))] = r
		}
		ps := c.pools[d.Pool]
		ps.last = r.ID
		ps.status.Desired = d.To
		ps.status.Scaling = true
		if c.counts[d.Pool] == nil {
			c.counts[d.Pool] = map[policy.Rule]uint64{}
		}
		c.counts[d.Pool][d.Rule]++
		records = append(records, r)
	}
	c.mu.Unlock()

	for _, r := range records {
		c.log.Info("scaling", "pool", r.Pool, "rule", string(r.Rule), "from", r.From, "to", r.To, "reason", r.Reason, "decision", r.ID)
		c.applying.Add(1)
		go c.apply(r)
	}
	if srcErr != nil {
		return records, fmt.Errorf("reading metrics: %w", srcErr)
	}
	return records, nil
}

func (c *Controller) isScaling(pool string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pools[pool].status.Scaling
}

// apply runs one decision through the driver and records the outcome.
func (c *Controller) apply(r Record) {
	defer c.applying.Done()
	err := c.cfg.Driver.Scale(c.applyCtx, r.Pool, r.To)
	now := c.clock()
	if err != nil {
		c.log.Error("applying decision failed", "pool", r.Pool, "to", r.To, "decision", r.ID, "err", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pools[r.Pool].status.Scaling = false
	if rec := c.recordLocked(r.ID); rec != nil {
		rec.Finished = now
		rec.Outcome = OutcomeApplied
		if err != nil {
			rec.Outcome, rec.Error = OutcomeFailed, err.Error()
		}
	}
}

// recordLocked returns the stored record id, or nil once the ring dropped it.
func (c *Controller) recordLocked(id uint64) *Record {
	n := uint64(len(c.ring))
	if id == 0 || n == 0 || id > c.nextID || c.nextID-id >= n {
		return nil
	}
	return &c.ring[(id-1)%n]
}

// Decisions returns the recorded decisions, oldest first (at most Config.History).
func (c *Controller) Decisions() []Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := uint64(len(c.ring))
	first := uint64(1)
	if c.nextID > n {
		first = c.nextID - n + 1
	}
	out := make([]Record, 0, c.nextID-first+1)
	for id := first; id <= c.nextID && n > 0; id++ {
		out = append(out, *c.recordLocked(id))
	}
	return out
}

// Status returns the controller's state.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{LastEvaluation: c.lastEval, Evaluations: c.evals, Error: c.lastError,
		DecisionCounts: map[string]map[policy.Rule]uint64{}}
	for pool, byRule := range c.counts {
		s.DecisionCounts[pool] = map[policy.Rule]uint64{}
		for r, n := range byRule {
			s.DecisionCounts[pool][r] = n
		}
	}
	for _, name := range c.order {
		ps := c.pools[name]
		st := ps.status
		if rec := c.recordLocked(ps.last); rec != nil {
			cp := *rec
			st.LastDecision = &cp
		}
		s.Pools = append(s.Pools, st)
	}
	return s
}
