// Package policy owns the scaling policy of agentserver: its YAML configuration and
// validation, and the Engine that turns a series of metric snapshots into scaling
// decisions (which pool, which rule fired, from how many replicas to how many).
//
// The package is pure and deterministic: the same configuration and the same series of
// snapshots give the same decisions, which is what lets the simulator replay a trace
// through exactly the code the controller runs. It must never do I/O, read a clock,
// draw random numbers, start goroutines or call a driver: time comes in with each
// Snapshot and decisions go out as values.
package policy

import (
	"fmt"
	"math"
	"time"
)

// Rule names the trigger behind a Decision.
type Rule string

// The rules a Decision can name.
const (
	// RuleQueueDepth: more runs waited than the pool's queue_depth for the sustained window.
	RuleQueueDepth Rule = "queue_depth"
	// RuleUtilizationHigh: average slot utilisation stayed above scale_up.utilization.
	RuleUtilizationHigh Rule = "utilization_high"
	// RuleUtilizationLowSustained: utilisation stayed below scale_down.utilization.
	RuleUtilizationLowSustained Rule = "utilization_low_sustained"
	// RuleLatencyP95: gateway p95 latency stayed above its target.
	RuleLatencyP95 Rule = "latency_p95"
	// RuleLatencyP95LowSustained: gateway p95 stayed below latency_ratio × target.
	RuleLatencyP95LowSustained Rule = "latency_p95_low_sustained"
	// RuleMinReplicas: fewer replicas ran than min_replicas (start-up, a crashed worker).
	RuleMinReplicas Rule = "min_replicas"
	// RuleMaxReplicas: more replicas ran than max_replicas (a lowered limit).
	RuleMaxReplicas Rule = "max_replicas"
)

// Snapshot is what the policy observes at one instant.
type Snapshot struct {
	// Time of the observation; it must not go backwards from one snapshot to the next.
	Time time.Time
	// Pools holds the metrics of each pool by name. A configured pool that is missing has
	// no data this time: no decision is made for it and its sustained windows restart.
	Pools map[string]PoolMetrics
	// Gateway holds the gateway metrics; nil when unknown (no decision, windows restart).
	Gateway *GatewayMetrics
}

// PoolMetrics are the observations of one worker pool.
type PoolMetrics struct {
	// QueueDepth counts the queued runs of the pool's slot type.
	QueueDepth int
	// SlotsTotal counts the slots of the pool's slot type on its ready workers.
	SlotsTotal int
	// SlotsUsed counts the busy slots among SlotsTotal.
	SlotsUsed int
	// Workers counts the pool's registered workers (ready, draining or otherwise).
	Workers int
	// Ready counts the workers that take work.
	Ready int
	// Draining counts the workers that finish their runs and take no new ones.
	Draining int
	// Replicas is the count the driver runs now, workers still starting included and
	// workers being drained away excluded: the baseline every decision starts from.
	Replicas int
	// Scaling is true while a previous decision for the pool is still being applied
	// (e.g. a drain): the engine keeps observing but decides nothing for the pool.
	Scaling bool
}

// GatewayMetrics are the observations of the gateways.
type GatewayMetrics struct {
	// P95 is the request latency p95 over the gateways' sliding window.
	P95 time.Duration
	// Replicas is the gateway count the driver runs now.
	Replicas int
	// Scaling is true while a previous gateway decision is still being applied.
	Scaling bool
}

// Inputs are the observations a decision was made on, with the values the engine derived.
type Inputs struct {
	// QueueDepth as observed.
	QueueDepth int
	// SlotsTotal as observed.
	SlotsTotal int
	// SlotsUsed as observed.
	SlotsUsed int
	// Workers as observed.
	Workers int
	// Ready as observed.
	Ready int
	// Draining as observed.
	Draining int
	// Replicas as observed.
	Replicas int
	// Starting counts replicas the driver runs that are not ready yet.
	Starting int
	// Utilization is SlotsUsed over the capacity of ready and starting replicas; valid
	// only when HasUtilization.
	Utilization float64
	// HasUtilization is false when the pool has no capacity to measure.
	HasUtilization bool
	// LatencyP95 is the gateways' p95 (gateway decisions only).
	LatencyP95 time.Duration
}

// Decision is one change of replica count the engine asks for.
type Decision struct {
	// Time of the snapshot that produced it.
	Time time.Time
	// Pool is the pool (or gateway) name the driver knows.
	Pool string
	// Rule that fired.
	Rule Rule
	// From is the replica count before.
	From int
	// To is the replica count asked for.
	To int
	// Inputs the decision was made on.
	Inputs Inputs
	// Reason explains the decision for people, e.g.
	// "queue depth 37 > 4 for 30s; +2 (clamped to max_replicas 10)".
	Reason string
}

// Up reports whether the decision adds replicas.
func (d Decision) Up() bool { return d.To > d.From }

// window tracks, per trigger, since when it has held without interruption, and when the
// target last scaled.
type window struct {
	since     map[Rule]time.Time
	lastScale time.Time
	scaled    bool
}

func newWindow() *window { return &window{since: map[Rule]time.Time{}} }

// observe records whether rule holds at now and reports for how long it has held.
func (w *window) observe(rule Rule, holds bool, now time.Time) (time.Duration, bool) {
	if !holds {
		delete(w.since, rule)
		return 0, false
	}
	s, ok := w.since[rule]
	if !ok {
		w.since[rule] = now
		return 0, true
	}
	return now.Sub(s), true
}

func (w *window) reset() { clear(w.since) }

// cooled reports whether cooldown has passed since the last scaling action.
func (w *window) cooled(now time.Time, cooldown time.Duration) bool {
	return !w.scaled || now.Sub(w.lastScale) >= cooldown
}

func (w *window) acted(now time.Time) {
	w.scaled, w.lastScale = true, now
}

// Engine applies a Config to a series of snapshots. It remembers, per pool, since when
// each trigger has held and when the pool last scaled; it assumes every decision it
// returns is applied. An Engine is not safe for concurrent use.
type Engine struct {
	cfg     Config
	pools   map[string]*window
	gateway *window
	last    time.Time
}

// NewEngine returns an engine for cfg, which must be valid.
func NewEngine(cfg Config) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid policy: %w", err)
	}
	e := &Engine{cfg: cfg, pools: map[string]*window{}, gateway: newWindow()}
	for _, p := range cfg.Pools {
		e.pools[p.Name] = newWindow()
	}
	return e, nil
}

// Config returns the engine's configuration.
func (e *Engine) Config() Config { return e.cfg }

// Evaluate observes s and returns the decisions to apply now, pools in configuration
// order and the gateways last; at most one decision per pool. A snapshot older than the
// previous one is ignored.
func (e *Engine) Evaluate(s Snapshot) []Decision {
	if s.Time.Before(e.last) {
		return nil
	}
	e.last = s.Time
	var out []Decision
	for i := range e.cfg.Pools {
		p := &e.cfg.Pools[i]
		w := e.pools[p.Name]
		m, ok := s.Pools[p.Name]
		if !ok {
			w.reset()
			continue
		}
		if d, ok := e.evaluatePool(p, w, m, s.Time); ok {
			out = append(out, d)
		}
	}
	if g := e.cfg.Gateway; g != nil {
		if s.Gateway == nil {
			e.gateway.reset()
		} else if d, ok := e.evaluateGateway(g, *s.Gateway, s.Time); ok {
			out = append(out, d)
		}
	}
	return out
}

// stepSize is the larger of the fixed and the proportional step.
func stepSize(s Step, current int) int {
	n := s.Count
	if p := (current*s.Percent + 99) / 100; p > n {
		n = p
	}
	return n
}

// poolInputs derives starting replicas and utilisation. Replicas that run but have not
// registered bring, once ready, the slots of an average ready worker (or
// slots_per_worker): counting them keeps the pool from growing again for capacity that
// is already on its way.
func poolInputs(p *PoolConfig, m PoolMetrics) (in Inputs, perWorker float64) {
	in = Inputs{
		QueueDepth: m.QueueDepth, SlotsTotal: m.SlotsTotal, SlotsUsed: m.SlotsUsed,
		Workers: m.Workers, Ready: m.Ready, Draining: m.Draining, Replicas: m.Replicas,
		Starting: max(0, m.Replicas-m.Ready),
	}
	perWorker = float64(p.SlotsPerWorker)
	if m.Ready > 0 && m.SlotsTotal > 0 {
		perWorker = float64(m.SlotsTotal) / float64(m.Ready)
	}
	capacity := float64(m.SlotsTotal) + float64(in.Starting)*perWorker
	if capacity > 0 {
		in.Utilization = float64(m.SlotsUsed) / capacity
		in.HasUtilization = true
	}
	return in, perWorker
}

func (e *Engine) evaluatePool(p *PoolConfig, w *window, m PoolMetrics, now time.Time) (Decision, bool) {
	in, perWorker := poolInputs(p, m)
	cur := m.Replicas
	decide := func(rule Rule, to int, reason string) (Decision, bool) {
		w.acted(now)
		return Decision{Time: now, Pool: p.Name, Rule: rule, From: cur, To: to, Inputs: in, Reason: reason}, true
	}

	// Queued runs not covered by the slots of starting replicas. A pool at zero replicas
	// grows on any waiting run whatever the threshold, or those runs would wait forever.
	waiting := m.QueueDepth - int(math.Floor(float64(in.Starting)*perWorker))
	threshold := p.ScaleUp.QueueDepth
	if cur == 0 {
		threshold = 0
	}
	queueFor, queueHigh := w.observe(RuleQueueDepth, waiting > threshold, now)
	utilHighFor, utilHigh := w.observe(RuleUtilizationHigh, in.HasUtilization && in.Utilization > p.ScaleUp.Utilization, now)
	// Runs waiting beyond the threshold are pressure, whatever utilisation says (e.g. runs
	// held back by a concurrency limit): never shrink then.
	utilLowFor, utilLow := w.observe(RuleUtilizationLowSustained,
		in.HasUtilization && in.Utilization < p.ScaleDown.Utilization && m.QueueDepth <= p.ScaleUp.QueueDepth, now)

	if m.Scaling {
		return Decision{}, false
	}
	switch {
	case cur < p.MinReplicas:
		return decide(RuleMinReplicas, p.MinReplicas, fmt.Sprintf("%d replicas < min_replicas %d", cur, p.MinReplicas))
	case cur > p.MaxReplicas:
		return decide(RuleMaxReplicas, p.MaxReplicas, fmt.Sprintf("%d replicas > max_replicas %d", cur, p.MaxReplicas))
	}

	up := p.ScaleUp
	if cur < p.MaxReplicas && w.cooled(now, up.Cooldown) {
		var rule Rule
		var why string
		switch {
		case queueHigh && queueFor >= up.Sustained:
			rule = RuleQueueDepth
			why = fmt.Sprintf("queue depth %d", m.QueueDepth)
			if in.Starting > 0 {
				why += fmt.Sprintf(" (%d beyond the slots of %d starting)", waiting, in.Starting)
			}
			why += fmt.Sprintf(" > %d for %s", threshold, queueFor)
		case utilHigh && utilHighFor >= up.Sustained:
			rule = RuleUtilizationHigh
			why = fmt.Sprintf("utilisation %.2f > %.2f for %s", in.Utilization, up.Utilization, utilHighFor)
		}
		if rule != "" {
			step := stepSize(up.Step, cur)
			to := min(cur+step, p.MaxReplicas)
			why += fmt.Sprintf("; +%d", step)
			if to < cur+step {
				why += fmt.Sprintf(" (clamped to max_replicas %d)", p.MaxReplicas)
			}
			return decide(rule, to, why)
		}
	}

	down := p.ScaleDown
	if cur > p.MinReplicas && utilLow && utilLowFor >= down.Sustained && w.cooled(now, down.Cooldown) {
		step := stepSize(down.Step, cur)
		to := max(cur-step, p.MinReplicas)
		// Never shrink so far that the remaining capacity would run above the scale-up
		// threshold: that would only invite the opposite decision (flapping). Replicas go
		// newest first, so starting ones (no slots yet) go before ready ones.
		want := to
		for to < cur {
			capacity := float64(m.SlotsTotal) + float64(in.Starting-(cur-to))*perWorker
			if m.SlotsUsed == 0 || (capacity > 0 && float64(m.SlotsUsed)/capacity <= up.Utilization) {
				break
			}
			to++
		}
		if to < cur {
			why := fmt.Sprintf("utilisation %.2f < %.2f for %s; -%d", in.Utilization, down.Utilization, utilLowFor, cur-to)
			switch {
			case to > want:
				why += fmt.Sprintf(" (limited so utilisation stays <= %.2f)", up.Utilization)
			case cur-step < p.MinReplicas:
				why += fmt.Sprintf(" (clamped to min_replicas %d)", p.MinReplicas)
			}
			return decide(RuleUtilizationLowSustained, to, why)
		}
	}
	return Decision{}, false
}

func (e *Engine) evaluateGateway(g *GatewayConfig, m GatewayMetrics, now time.Time) (Decision, bool) {
	w := e.gateway
	cur := m.Replicas
	in := Inputs{Replicas: m.Replicas, LatencyP95: m.P95}
	decide := func(rule Rule, to int, reason string) (Decision, bool) {
		w.acted(now)
		return Decision{Time: now, Pool: g.Name, Rule: rule, From: cur, To: to, Inputs: in, Reason: reason}, true
	}
	lowBar := time.Duration(float64(g.LatencyP95Target) * g.DownRatio)
	highFor, high := w.observe(RuleLatencyP95, m.P95 > g.LatencyP95Target, now)
	lowFor, low := w.observe(RuleLatencyP95LowSustained, m.P95 < lowBar, now)
	if m.Scaling {
		return Decision{}, false
	}
	switch {
	case cur < g.MinReplicas:
		return decide(RuleMinReplicas, g.MinReplicas, fmt.Sprintf("%d gateways < min_replicas %d", cur, g.MinReplicas))
	case cur > g.MaxReplicas:
		return decide(RuleMaxReplicas, g.MaxReplicas, fmt.Sprintf("%d gateways > max_replicas %d", cur, g.MaxReplicas))
	}
	if cur < g.MaxReplicas && high && highFor >= g.Up.Sustained && w.cooled(now, g.Up.Cooldown) {
		step := stepSize(g.Up.Step, cur)
		to := min(cur+step, g.MaxReplicas)
		why := fmt.Sprintf("p95 %s > target %s for %s; +%d", m.P95, g.LatencyP95Target, highFor, step)
		if to < cur+step {
			why += fmt.Sprintf(" (clamped to max_replicas %d)", g.MaxReplicas)
		}
		return decide(RuleLatencyP95, to, why)
	}
	if cur > g.MinReplicas && low && lowFor >= g.Down.Sustained && w.cooled(now, g.Down.Cooldown) {
		step := stepSize(g.Down.Step, cur)
		to := max(cur-step, g.MinReplicas)
		why := fmt.Sprintf("p95 %s < %s for %s; -%d", m.P95, lowBar, lowFor, cur-to)
		return decide(RuleLatencyP95LowSustained, to, why)
	}
	return Decision{}, false
}
