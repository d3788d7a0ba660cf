// Package simulate owns the autoscaler's simulation mode: it replays an arrival trace
// through the very policy.Engine the controller runs, against a model of worker pools
// (slots per worker, a start-up delay, a FIFO queue per slot type, drains that let
// running runs finish), and reports what happened: replicas, queue depth, utilisation
// and queueing latency over time, as text, CSV and an SVG plot.
//
// A simulation is deterministic: the same trace, policy and options (seed included)
// give byte-identical reports. The package must never read a clock, touch real workers
// or use a random source other than the one seeded from Options.Seed.
package simulate

import (
	"container/heap"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/agentserver/agentserver/services/autoscaler/internal/policy"
)

// Defaults of Options.
const (
	// DefaultStartupDelay is how long a new worker takes to register and take work.
	DefaultStartupDelay = 20 * time.Second
	// DefaultJitter spreads run durations by ±10 %.
	DefaultJitter = 0.1
	// DefaultMaxTail bounds the simulation after the last arrival.
	DefaultMaxTail = 6 * time.Hour
)

// Options tune the model.
type Options struct {
	// Seed drives the per-run randomness: each run's arrival within its row's second and
	// its duration's jitter.
	Seed uint64
	// Jitter spreads each run's duration uniformly within ±Jitter of the trace's value
	// (0 ≤ Jitter < 1). Nil means DefaultJitter.
	Jitter *float64
	// StartupDelay is how long a new worker takes to register and take work; nil means
	// DefaultStartupDelay.
	StartupDelay *time.Duration
	// MaxTail bounds the simulated time after the last arrival; 0 means DefaultMaxTail.
	// The simulation ends earlier once every run has finished and every pool has settled
	// at its min_replicas.
	MaxTail time.Duration
}

// Sample is the state of one pool at one evaluation.
type Sample struct {
	// At is the time from the start of the trace.
	At time.Duration
	// Replicas the driver would report (starting included, draining excluded).
	Replicas int
	// Ready workers (registered, taking work).
	Ready int
	// Draining workers.
	Draining int
	// Queue is the number of queued runs.
	Queue int
	// Utilization of the ready workers' slots; 0 without ready workers.
	Utilization float64
	// LatencyP95 of the queueing latency of runs placed since the previous sample and,
	// so that a stuck queue shows, of the wait so far of runs still queued.
	LatencyP95 time.Duration
}

// PoolResult sums up one pool.
type PoolResult struct {
	// Config is the pool's policy.
	Config policy.PoolConfig
	// Runs that arrived for the pool.
	Runs int
	// Completed runs.
	Completed int
	// PeakQueue is the longest queue seen, and PeakQueueAt when.
	PeakQueue int
	// PeakQueueAt is when the queue was longest.
	PeakQueueAt time.Duration
	// Latency percentiles of queueing latency (placement minus arrival), over placed runs.
	P50, P95, P99, Max time.Duration
	// PeakReplicas is the most replicas at once; FinalReplicas the count at the end.
	PeakReplicas, FinalReplicas int
	// ReplicaSeconds integrates running workers (starting, ready or draining) over time.
	ReplicaSeconds float64
	// Utilization is busy slot-seconds over the slot-seconds of registered workers
	// (draining ones included: they still hold their slots).
	Utilization float64
	// Samples, one per evaluation.
	Samples []Sample
}

// Result is a finished simulation.
type Result struct {
	// Policy simulated.
	Policy policy.Config
	// Options used, defaults applied.
	Options Options
	// Rows and Runs in the trace.
	Rows, Runs int
	// LastArrival is the time of the trace's last row.
	LastArrival time.Duration
	// End is when the simulation stopped.
	End time.Duration
	// Settled is true when every run finished and every pool was back at min_replicas.
	Settled bool
	// Pools in policy order.
	Pools []*PoolResult
	// Decisions made by the policy engine, times relative to Epoch.
	Decisions []policy.Decision
}

// Epoch is the wall-clock time of a trace's start, as the policy engine sees it.
var Epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

type run struct {
	arrive, start, dur time.Duration
	pool               int
}

type worker struct {
	id                    int
	readyAt               time.Duration
	ready, draining, gone bool
	busy                  int
}

type poolSim struct {
	cfg     policy.PoolConfig
	res     *PoolResult
	workers []*worker // alive (starting, ready, draining), by id
	queue   []int     // run indexes, FIFO
	nextID  int
	placed  []time.Duration // queueing latencies since the last sample
	waits   []time.Duration // all queueing latencies

	readySlotSeconds float64
	busySlotSeconds  float64
}

type eventKind int

// At equal times: runs finish before workers become ready, before arrivals, before
// the policy looks: the policy sees the state after everything due at that instant.
const (
	evFinish eventKind = iota
	evReady
	evArrive
	evTick
)

type event struct {
	at     time.Duration
	kind   eventKind
	seq    uint64
	run    int
	pool   int
	worker *worker
}

type eventHeap []event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	if h[i].at != h[j].at {
		return h[i].at < h[j].at
	}
	if h[i].kind != h[j].kind {
		return h[i].kind < h[j].kind
	}
	return h[i].seq < h[j].seq
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(event)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

type sim struct {
	cfg    policy.Config
	opt    Options
	engine *policy.Engine
	pools  []*poolSim
	runs   []run
	events eventHeap
	seq    uint64
	now    time.Duration
	res    *Result
}

func (s *sim) push(e event) {
	s.seq++
	e.seq = s.seq
	heap.Push(&s.events, e)
}

// Run simulates trace under cfg.
func Run(cfg policy.Config, trace []Arrival, opt Options) (*Result, error) {
	engine, err := policy.NewEngine(cfg)
	if err != nil {
		return nil, err
	}
	if opt.Jitter == nil {
		j := DefaultJitter
		opt.Jitter = &j
	}
	if j := *opt.Jitter; !(j >= 0 && j < 1) {
		return nil, fmt.Errorf("jitter must be in [0, 1) (got %v)", j)
	}
	if opt.StartupDelay == nil {
		d := DefaultStartupDelay
		opt.StartupDelay = &d
	}
	if *opt.StartupDelay < 0 {
		return nil, fmt.Errorf("startup delay must be >= 0 (got %s)", *opt.StartupDelay)
	}
	if opt.MaxTail == 0 {
		opt.MaxTail = DefaultMaxTail
	}
	if opt.MaxTail < 0 {
		return nil, fmt.Errorf("max tail must be >= 0 (got %s)", opt.MaxTail)
	}
	if len(trace) == 0 {
		return nil, errors.New("empty trace")
	}
	s := &sim{cfg: cfg, opt: opt, engine: engine, res: &Result{Policy: cfg, Options: opt, Rows: len(trace)}}
	bySlot := map[string]int{}
	for i, p := range cfg.Pools {
		ps := &poolSim{cfg: p, res: &PoolResult{Config: p}}
		s.pools = append(s.pools, ps)
		s.res.Pools = append(s.res.Pools, ps.res)
		if _, ok := bySlot[p.SlotType]; !ok {
			bySlot[p.SlotType] = i // the first pool of a slot type takes its runs
		}
	}
	rng := rand.New(rand.NewPCG(opt.Seed, 0x5eed_a5ca1e))
	for _, a := range trace {
		pi, ok := bySlot[a.SlotType]
		if !ok {
			return nil, fmt.Errorf("trace line %d: slot type %q has no pool in the policy", a.Line, a.SlotType)
		}
		for range a.Runs {
			// Draw both numbers for every run so that one run's draw never depends on
			// another's parameters.
			offset := time.Duration(rng.Float64() * float64(time.Second))
			factor := 1 + *opt.Jitter*(2*rng.Float64()-1)
			dur := max(time.Millisecond, time.Duration(math.Round(float64(a.Duration)*factor)))
			s.runs = append(s.runs, run{arrive: a.At + offset, start: -1, dur: dur, pool: pi})
			s.pools[pi].res.Runs++
		}
		s.res.LastArrival = max(s.res.LastArrival, a.At)
	}
	s.res.Runs = len(s.runs)
	// The cluster ran before the trace began: every pool starts at min_replicas, ready.
	for _, p := range s.pools {
		for range p.cfg.MinReplicas {
			p.nextID++
			p.workers = append(p.workers, &worker{id: p.nextID, ready: true})
		}
	}
	for i, r := range s.runs {
		s.push(event{at: r.arrive, kind: evArrive, run: i})
	}
	s.push(event{at: 0, kind: evTick})
	s.loop()
	s.finish()
	return s.res, nil
}

func (s *sim) loop() {
	deadline := s.res.LastArrival + time.Second + s.opt.MaxTail
	for s.events.Len() > 0 {
		e := heap.Pop(&s.events).(event)
		s.advance(e.at)
		switch e.kind {
		case evArrive:
			r := &s.runs[e.run]
			p := s.pools[r.pool]
			p.queue = append(p.queue, e.run)
			s.dispatch(p)
			if len(p.queue) > p.res.PeakQueue {
				p.res.PeakQueue, p.res.PeakQueueAt = len(p.queue), s.now
			}
		case evFinish:
			r := &s.runs[e.run]
			p := s.pools[r.pool]
			p.res.Completed++
			w := e.worker
			w.busy--
			if w.draining && w.busy == 0 {
				p.remove(w)
			}
			s.dispatch(p)
		case evReady:
			w := e.worker
			if w.gone || w.draining {
				continue
			}
			w.ready = true
			s.dispatch(s.pools[e.pool])
		case evTick:
			s.tick()
			if s.settled() {
				s.res.Settled = true
				return
			}
			if s.now >= deadline {
				return
			}
			s.push(event{at: s.now + s.cfg.Interval, kind: evTick})
		}
	}
}

// advance moves the clock to t, integrating replica- and slot-seconds.
func (s *sim) advance(t time.Duration) {
	dt := (t - s.now).Seconds()
	if dt > 0 {
		for _, p := range s.pools {
			// Draining workers still hold their slots (and cost): they count.
			var ready, busy int
			for _, w := range p.workers {
				if w.ready {
					ready++
					busy += w.busy
				}
			}
			p.res.ReplicaSeconds += float64(len(p.workers)) * dt
			p.busySlotSeconds += float64(busy) * dt
			p.readySlotSeconds += float64(ready*p.cfg.SlotsPerWorker) * dt
		}
	}
	s.now = t
}

// dispatch places queued runs, oldest first, on the oldest ready worker with a free
// slot (packing keeps the newest workers idle, and they are the first to go).
func (s *sim) dispatch(p *poolSim) {
	for len(p.queue) > 0 {
		var free *worker
		for _, w := range p.workers {
			if w.ready && !w.draining && w.busy < p.cfg.SlotsPerWorker {
				free = w
				break
			}
		}
		if free == nil {
			return
		}
		ri := p.queue[0]
		p.queue = p.queue[1:]
		r := &s.runs[ri]
		r.start = s.now
		free.busy++
		wait := s.now - r.arrive
		p.placed = append(p.placed, wait)
		p.waits = append(p.waits, wait)
		s.push(event{at: s.now + r.dur, kind: evFinish, run: ri, worker: free})
	}
	if len(p.queue) == 0 {
		p.queue = nil // let the backing array go
	}
}

func (p *poolSim) remove(w *worker) {
	w.gone = true
	p.workers = slices.DeleteFunc(p.workers, func(x *worker) bool { return x == w })
}

// tick is one policy evaluation, as the controller would run it with the process driver.
func (s *sim) tick() {
	snap := policy.Snapshot{Time: Epoch.Add(s.now), Pools: map[string]policy.PoolMetrics{}}
	for _, p := range s.pools {
		snap.Pools[p.cfg.Name] = p.metrics()
	}
	for _, d := range s.engine.Evaluate(snap) {
		s.res.Decisions = append(s.res.Decisions, d)
		for i, p := range s.pools {
			if p.cfg.Name == d.Pool {
				s.apply(i, p, d.To)
			}
		}
	}
	for _, p := range s.pools {
		m := p.metrics()
		util := 0.0
		if m.SlotsTotal > 0 {
			util = float64(m.SlotsUsed) / float64(m.SlotsTotal)
		}
		lat := slices.Clone(p.placed)
		for _, ri := range p.queue {
			lat = append(lat, s.now-s.runs[ri].arrive)
		}
		p.placed = p.placed[:0]
		p.res.Samples = append(p.res.Samples, Sample{
			At: s.now, Replicas: m.Replicas, Ready: m.Ready, Draining: m.Draining,
			Queue: m.QueueDepth, Utilization: util, LatencyP95: percentile(lat, 95),
		})
		p.res.PeakReplicas = max(p.res.PeakReplicas, m.Replicas)
	}
}

// metrics is what the scheduler and the process driver would report for p now.
func (p *poolSim) metrics() policy.PoolMetrics {
	var m policy.PoolMetrics
	for _, w := range p.workers {
		switch {
		case w.draining:
			m.Draining++
			m.Workers++
		case w.ready:
			m.Ready++
			m.Workers++
			m.SlotsTotal += p.cfg.SlotsPerWorker
			m.SlotsUsed += w.busy
			m.Replicas++
		default: // starting: the driver counts it, the scheduler does not know it yet
			m.Replicas++
		}
	}
	m.QueueDepth = len(p.queue)
	// The process driver's Scale blocks until its drains finish.
	m.Scaling = m.Draining > 0
	return m
}

// apply changes p's replicas to n as the process driver would: new workers start (ready
// after the start-up delay); removed ones go newest first, those still starting at
// once, the others after draining (no new work; running runs finish).
func (s *sim) apply(pi int, p *poolSim, n int) {
	var live []*worker
	for _, w := range p.workers {
		if !w.draining {
			live = append(live, w)
		}
	}
	for i := len(live); i < n; i++ {
		p.nextID++
		w := &worker{id: p.nextID, readyAt: s.now + *s.opt.StartupDelay}
		p.workers = append(p.workers, w)
		s.push(event{at: w.readyAt, kind: evReady, pool: pi, worker: w})
	}
	for i := len(live) - 1; i >= n; i-- {
		w := live[i]
		w.draining = true
		if w.busy == 0 {
			p.remove(w)
		}
	}
}

// settled reports whether the simulation can stop: the trace is over, every run
// finished, and every pool sits at its minimum with nothing in flight.
func (s *sim) settled() bool {
	if s.now <= s.res.LastArrival+time.Second {
		return false
	}
	for _, p := range s.pools {
		if p.res.Completed < p.res.Runs || len(p.queue) > 0 {
			return false
		}
		m := p.metrics()
		if m.Draining > 0 || m.Replicas != p.cfg.MinReplicas || m.Ready != m.Replicas {
			return false
		}
	}
	return true
}

func (s *sim) finish() {
	s.res.End = s.now
	for _, p := range s.pools {
		r := p.res
		if p.readySlotSeconds > 0 {
			r.Utilization = p.busySlotSeconds / p.readySlotSeconds
		}
		slices.Sort(p.waits)
		r.P50, r.P95, r.P99 = percentileSorted(p.waits, 50), percentileSorted(p.waits, 95), percentileSorted(p.waits, 99)
		if len(p.waits) > 0 {
			r.Max = p.waits[len(p.waits)-1]
		}
		r.FinalReplicas = p.metrics().Replicas
	}
}

// percentile is the nearest-rank percentile of d (unsorted; d is reordered).
func percentile(d []time.Duration, pct int) time.Duration {
	slices.Sort(d)
	return percentileSorted(d, pct)
}

func percentileSorted(d []time.Duration, pct int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	rank := (pct*len(d) + 99) / 100 // ceil(pct/100 × n)
	return d[max(rank, 1)-1]
}
