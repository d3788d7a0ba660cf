package policy

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// testPool is a pool with round numbers: 4 slots per worker, 1..10 replicas, step 1,
// scale-up after 30s with a 1m cooldown, scale-down after 5m with a 2m cooldown.
func testPool(name string) PoolConfig {
	return PoolConfig{
		Name: name, SlotType: name, MinReplicas: 1, MaxReplicas: 10, SlotsPerWorker: 4,
		ScaleUp: ScaleUp{QueueDepth: 4, Utilization: 0.8, Sustained: 30 * time.Second,
			Cooldown: time.Minute, Step: Step{Count: 1}},
		ScaleDown: ScaleDown{Utilization: 0.2, Sustained: 5 * time.Minute,
			Cooldown: 2 * time.Minute, Step: Step{Count: 1}},
	}
}

func testGateway() *GatewayConfig {
	return &GatewayConfig{
		Name: "gateway", MinReplicas: 1, MaxReplicas: 4, LatencyP95Target: 500 * time.Millisecond,
		Up:        GatewayAction{Sustained: 30 * time.Second, Cooldown: time.Minute, Step: Step{Count: 1}},
		Down:      GatewayAction{Sustained: 5 * time.Minute, Cooldown: 2 * time.Minute, Step: Step{Count: 1}},
		DownRatio: 0.5,
	}
}

// load describes a pool's observed state as a function of its replica count, so a
// harness can replay a metric series against a pool that follows its own decisions.
type load func(replicas int) PoolMetrics

// busy reports every replica ready, with used slots and queued runs fixed.
func busy(used, queued int) load {
	return func(r int) PoolMetrics {
		return PoolMetrics{Replicas: r, Workers: r, Ready: r, SlotsTotal: 4 * r, SlotsUsed: min(used, 4*r), QueueDepth: queued}
	}
}

// util reports every replica ready at utilisation u.
func util(u float64) load {
	return func(r int) PoolMetrics {
		return PoolMetrics{Replicas: r, Workers: r, Ready: r, SlotsTotal: 4 * r, SlotsUsed: int(math.Round(u * float64(4*r)))}
	}
}

// harness feeds one pool (and optionally the gateways) into an engine every interval and
// applies every decision to the replica counts at once.
type harness struct {
	t         *testing.T
	e         *Engine
	interval  time.Duration
	now       time.Time
	replicas  map[string]int
	decisions []Decision
}

func newHarness(t *testing.T, cfg Config, replicas map[string]int) *harness {
	t.Helper()
	if cfg.Interval == 0 {
		cfg.Interval = 15 * time.Second
	}
	e, err := NewEngine(cfg)
	require.NoError(t, err)
	return &harness{t: t, e: e, interval: cfg.Interval, now: t0, replicas: replicas}
}

// tick observes the pools (each load called with the pool's replicas) and returns the
// decisions of this instant; time then moves on by one interval.
func (h *harness) tick(loads map[string]load, gw *GatewayMetrics) []Decision {
	s := Snapshot{Time: h.now, Pools: map[string]PoolMetrics{}}
	for name, l := range loads {
		s.Pools[name] = l(h.replicas[name])
	}
	if gw != nil {
		g := *gw
		g.Replicas = h.replicas[h.e.cfg.Gateway.Name]
		s.Gateway = &g
	}
	ds := h.e.Evaluate(s)
	for _, d := range ds {
		require.Equal(h.t, h.replicas[d.Pool], d.From, "decision starts from the observed replicas")
		h.replicas[d.Pool] = d.To
	}
	h.decisions = append(h.decisions, ds...)
	h.now = h.now.Add(h.interval)
	return ds
}

// run ticks n times with the same load of pool "cpu".
func (h *harness) run(n int, l load) []Decision {
	var out []Decision
	for range n {
		out = append(out, h.tick(map[string]load{"cpu": l}, nil)...)
	}
	return out
}

func single(p PoolConfig) Config { return Config{Interval: 15 * time.Second, Pools: []PoolConfig{p}} }

func TestQueueDepthFiresAfterSustainedWindow(t *testing.T) {
	t.Parallel()
	h := newHarness(t, single(testPool("cpu")), map[string]int{"cpu": 2})
	// 5 queued > 4: observed at 0s, 15s, 30s; fires at 30s (held 30s), not before.
	require.Empty(t, h.run(2, busy(8, 5)))
	ds := h.run(1, busy(8, 5))
	require.Len(t, ds, 1)
	d := ds[0]
	require.Equal(t, RuleQueueDepth, d.Rule)
	require.Equal(t, t0.Add(30*time.Second), d.Time)
	require.Equal(t, "cpu", d.Pool)
	require.Equal(t, 2, d.From)
	require.Equal(t, 3, d.To)
	require.Equal(t, 5, d.Inputs.QueueDepth)
	require.Equal(t, "queue depth 5 > 4 for 30s; +1", d.Reason)
}

func TestQueueAtThresholdDoesNotFire(t *testing.T) {
	t.Parallel()
	h := newHarness(t, single(testPool("cpu")), map[string]int{"cpu": 2})
	require.Empty(t, h.run(100, busy(4, 4)))
}

func TestUtilizationHighFires(t *testing.T) {
	t.Parallel()
	h := newHarness(t, single(testPool("cpu")), map[string]int{"cpu": 4})
	ds := h.run(3, busy(14, 0)) // 14/16 = 0.875
	require.Len(t, ds, 1)
	require.Equal(t, RuleUtilizationHigh, ds[0].Rule)
	require.Equal(t, 4, ds[0].From)
	require.Equal(t, 5, ds[0].To)
	require.InDelta(t, 0.875, ds[0].Inputs.Utilization, 1e-9)
	require.Equal(t, "utilisation 0.88 > 0.80 for 30s; +1", ds[0].Reason)
}

func TestUtilizationExactlyAtThresholdDoesNotFire(t *testing.T) {
	t.Parallel()
	h := newHarness(t, single(testPool("cpu")), map[string]int{"cpu": 5})
	require.Empty(t, h.run(100, busy(16, 0))) // 16/20 = 0.80, not above
}

func TestQueueDepthNamedWhenBothTriggersHold(t *testing.T) {
	t.Parallel()
	h := newHarness(t, single(testPool("cpu")), map[string]int{"cpu": 2})
	ds := h.run(3, busy(8, 10))
	require.Len(t, ds, 1)
	require.Equal(t, RuleQueueDepth, ds[0].Rule)
}

func TestUtilizationLowSustainedFiresAfterFiveMinutes(t *testing.T) {
	t.Parallel()
	h := newHarness(t, single(testPool("cpu")), map[string]int{"cpu": 5})
	// 2/20 = 0.1 < 0.2 from 0s; fires at 5m (the 21st observation), not before.
	require.Empty(t, h.run(20, busy(2, 0)))
	ds := h.run(1, busy(2, 0))
	require.Len(t, ds, 1)
	require.Equal(t, RuleUtilizationLowSustained, ds[0].Rule)
	require.Equal(t, t0.Add(5*time.Minute), ds[0].Time)
	require.Equal(t, 5, ds[0].From)
	require.Equal(t, 4, ds[0].To)
	require.Equal(t, "utilisation 0.10 < 0.20 for 5m0s; -1", ds[0].Reason)
}

func TestLowUtilizationDoesNotShrinkWhileRunsWait(t *testing.T) {
	t.Parallel()
	// Runs held back (e.g. by a concurrency limit) while slots idle: at max the pool
	// cannot grow, and it must not shrink either.
	p := testPool("cpu")
	p.MaxReplicas = 5
	h := newHarness(t, single(p), map[string]int{"cpu": 5})
	require.Empty(t, h.run(100, busy(2, 10)))
}

func TestGatewayLatencyRules(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Interval: 15 * time.Second, Gateway: testGateway()}, map[string]int{"gateway": 1})
	slow := &GatewayMetrics{P95: 800 * time.Millisecond}
	require.Empty(t, h.tick(nil, slow))
	require.Empty(t, h.tick(nil, slow))
	ds := h.tick(nil, slow)
	require.Len(t, ds, 1)
	require.Equal(t, RuleLatencyP95, ds[0].Rule)
	require.Equal(t, "gateway", ds[0].Pool)
	require.Equal(t, 1, ds[0].From)
	require.Equal(t, 2, ds[0].To)
	require.Equal(t, 800*time.Millisecond, ds[0].Inputs.LatencyP95)
	require.Equal(t, "p95 800ms > target 500ms for 30s; +1", ds[0].Reason)

	// Between 250ms (0.5 × target) and the target nothing happens, however long.
	for range 100 {
		require.Empty(t, h.tick(nil, &GatewayMetrics{P95: 400 * time.Millisecond}))
	}
	// Below 250ms for 5m: shrink.
	fast := &GatewayMetrics{P95: 100 * time.Millisecond}
	var got []Decision
	for range 21 {
		got = append(got, h.tick(nil, fast)...)
	}
	require.Len(t, got, 1)
	require.Equal(t, RuleLatencyP95LowSustained, got[0].Rule)
	require.Equal(t, 2, got[0].From)
	require.Equal(t, 1, got[0].To)
	// At min, no traffic at all (p95 0) changes nothing.
	for range 100 {
		require.Empty(t, h.tick(nil, &GatewayMetrics{}))
	}
}

func TestGatewayClampsAndUnknownLatency(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Interval: 15 * time.Second, Gateway: testGateway()}, map[string]int{"gateway": 0})
	ds := h.tick(nil, &GatewayMetrics{P95: 300 * time.Millisecond})
	require.Len(t, ds, 1)
	require.Equal(t, RuleMinReplicas, ds[0].Rule)
	require.Equal(t, 1, ds[0].To)

	h.replicas["gateway"] = 9
	ds = h.tick(nil, &GatewayMetrics{P95: 300 * time.Millisecond})
	require.Len(t, ds, 1)
	require.Equal(t, RuleMaxReplicas, ds[0].Rule)
	require.Equal(t, 4, ds[0].To)

	// Unknown latency (nil) restarts the window: slow, unknown, slow, slow never fires
	// until three slow observations in a row.
	h.replicas["gateway"] = 2
	h.now = h.now.Add(time.Hour)
	slow := &GatewayMetrics{P95: time.Second}
	require.Empty(t, h.tick(nil, slow))
	require.Empty(t, h.tick(nil, slow))
	require.Empty(t, h.tick(nil, nil))
	require.Empty(t, h.tick(nil, slow))
	require.Empty(t, h.tick(nil, slow))
	require.Len(t, h.tick(nil, slow), 1)
}

func TestMinReplicasIgnoresWindowsAndCooldowns(t *testing.T) {
	t.Parallel()
	h := newHarness(t, single(testPool("cpu")), map[string]int{"cpu": 0})
	ds := h.run(1, busy(0, 0))
	require.Len(t, ds, 1)
	require.Equal(t, RuleMinReplicas, ds[0].Rule)
	require.Equal(t, 0, ds[0].From)
	require.Equal(t, 1, ds[0].To)
	require.Equal(t, "0 replicas < min_replicas 1", ds[0].Reason)

	// A worker crashes right after: restored at once, cooldown or not.
	h.replicas["cpu"] = 0
	ds = h.run(1, busy(0, 0))
	require.Len(t, ds, 1)
	require.Equal(t, RuleMinReplicas, ds[0].Rule)
}

func TestMaxReplicasLowersAnOversizedPool(t *testing.T) {
	t.Parallel()
	h := newHarness(t, single(testPool("cpu")), map[string]int{"cpu": 14})
	ds := h.run(1, busy(56, 100))
	require.Len(t, ds, 1)
	require.Equal(t, RuleMaxReplicas, ds[0].Rule)
	require.Equal(t, 14, ds[0].From)
	require.Equal(t, 10, ds[0].To)
}

func TestScaleUpClampsToMaxAndStopsThere(t *testing.T) {
	t.Parallel()
	p := testPool("cpu")
	p.ScaleUp.Step = Step{Count: 4}
	h := newHarness(t, single(p), map[string]int{"cpu": 8})
	ds := h.run(3, busy(32, 50))
	require.Len(t, ds, 1)
	require.Equal(t, RuleQueueDepth, ds[0].Rule)
	require.Equal(t, 10, ds[0].To)
	require.Equal(t, "queue depth 50 > 4 for 30s; +4 (clamped to max_replicas 10)", ds[0].Reason)
	// At max, pressure changes nothing.
	require.Empty(t, h.run(100, busy(40, 50)))
}

func TestStepPercent(t *testing.T) {
	t.Parallel()
	require.Equal(t, 1, stepSize(Step{Count: 1}, 10))
	require.Equal(t, 5, stepSize(Step{Count: 1, Percent: 50}, 10))
	require.Equal(t, 2, stepSize(Step{Count: 1, Percent: 50}, 3)) // rounded up
	require.Equal(t, 3, stepSize(Step{Count: 3, Percent: 10}, 10))
	require.Equal(t, 1, stepSize(Step{Count: 1, Percent: 100}, 0))
}

func TestScaleDownClampsToMin(t *testing.T) {
	t.Parallel()
	p := testPool("cpu")
	p.MinReplicas = 2
	p.ScaleDown.Step = Step{Count: 5}
	h := newHarness(t, single(p), map[string]int{"cpu": 4})
	ds := h.run(21, busy(0, 0))
	require.Len(t, ds, 1)
	require.Equal(t, 2, ds[0].To)
	require.Equal(t, "utilisation 0.00 < 0.20 for 5m0s; -2 (clamped to min_replicas 2)", ds[0].Reason)
	require.Empty(t, h.run(100, busy(0, 0)), "at min, idleness changes nothing")
}

func TestScaleDownNeverOvershootsIntoScaleUp(t *testing.T) {
	t.Parallel()
	p := testPool("cpu")
	p.ScaleDown.Step = Step{Count: 9}
	h := newHarness(t, single(p), map[string]int{"cpu": 10})
	// 7 of 40 slots busy (0.175). Dropping to 1 or 2 replicas would put utilisation at
	// 1.75 or 0.875, above 0.8; 3 replicas (0.58) is the least that holds.
	ds := h.run(21, busy(7, 0))
	require.Len(t, ds, 1)
	require.Equal(t, 3, ds[0].To)
	require.Equal(t, "utilisation 0.17 < 0.20 for 5m0s; -7 (limited so utilisation stays <= 0.80)", ds[0].Reason)
}

func TestUpCooldown(t *testing.T) {
	t.Parallel()
	p := testPool("cpu")
	p.ScaleUp.Sustained = 0
	h := newHarness(t, single(p), map[string]int{"cpu": 1})
	// Constant pressure, no sustain: one scale-up per minute (every 4th tick), no more.
	ds := h.run(12, busy(1000, 1000))
	require.Len(t, ds, 3)
	for i, d := range ds {
		require.Equal(t, t0.Add(time.Duration(i)*time.Minute), d.Time)
		require.Equal(t, 1+i, d.From)
		require.Equal(t, 2+i, d.To)
	}
}

func TestDownCooldownAfterScaleUpAndSeparateUpCooldown(t *testing.T) {
	t.Parallel()
	p := testPool("cpu")
	p.ScaleUp.Sustained = 0
	p.ScaleUp.Cooldown = 15 * time.Second
	p.ScaleDown.Sustained = 0
	p.ScaleDown.Cooldown = 2 * time.Minute
	h := newHarness(t, single(p), map[string]int{"cpu": 3})
	ds := h.run(1, busy(12, 10)) // t=0: up
	require.Len(t, ds, 1)
	require.True(t, ds[0].Up())
	// Load vanishes at once: the down cooldown (2m since the scale-up) holds the pool.
	require.Empty(t, h.run(7, busy(0, 0))) // t=15s..1m45s
	ds = h.run(1, busy(0, 0))              // t=2m
	require.Len(t, ds, 1)
	require.Equal(t, t0.Add(2*time.Minute), ds[0].Time)
	require.Equal(t, RuleUtilizationLowSustained, ds[0].Rule)
	// The short up cooldown lets load back in one interval after the scale-down.
	ds = h.run(1, busy(1000, 10))
	require.Len(t, ds, 1)
	require.True(t, ds[0].Up())
	require.Equal(t, t0.Add(2*time.Minute+15*time.Second), ds[0].Time)
}

func TestOneDipRestartsTheSustainedWindow(t *testing.T) {
	t.Parallel()
	h := newHarness(t, single(testPool("cpu")), map[string]int{"cpu": 2})
	hot, cool := busy(8, 5), busy(4, 0)
	require.Empty(t, h.run(2, hot))  // 0s, 15s
	require.Empty(t, h.run(1, cool)) // 30s: the streak breaks
	require.Empty(t, h.run(2, hot))  // 45s, 60s: a new streak, 15s long
	ds := h.run(1, hot)              // 75s: held 30s
	require.Len(t, ds, 1)
	require.Equal(t, t0.Add(75*time.Second), ds[0].Time)

	// Down: one busy observation in the 5m window restarts it.
	h = newHarness(t, single(testPool("cpu")), map[string]int{"cpu": 5})
	require.Empty(t, h.run(19, busy(2, 0)))
	require.Empty(t, h.run(1, busy(8, 0)))  // 0.4: not low
	require.Empty(t, h.run(20, busy(2, 0))) // 5m after the dip minus one interval
	require.Len(t, h.run(1, busy(2, 0)), 1)
}

func TestNoFlappingOnNoise(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		at   func(i int, rng *rand.Rand) load
	}{
		{"around the high threshold", func(i int, _ *rand.Rand) load {
			if i%2 == 0 {
				return util(0.85)
			}
			return util(0.75)
		}},
		{"around the low threshold", func(i int, _ *rand.Rand) load {
			if i%3 == 0 {
				return util(0.25)
			}
			return util(0.15)
		}},
		{"uniform noise between the thresholds", func(_ int, rng *rand.Rand) load {
			return util(0.25 + rng.Float64()*0.5)
		}},
		{"queue spikes shorter than the window", func(i int, _ *rand.Rand) load {
			if i%3 == 2 {
				return busy(12, 0)
			}
			return busy(12, 40)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, single(testPool("cpu")), map[string]int{"cpu": 4})
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range 2000 {
				require.Empty(t, h.run(1, tc.at(i, rng)), "tick %d", i)
			}
		})
	}
}

// A pool under random load that follows its own decisions never reverses direction
// faster than the cooldowns allow, and every decision stays within [min, max].
func TestHysteresisOnRandomWalk(t *testing.T) {
	t.Parallel()
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 42))
		p := testPool("cpu")
		h := newHarness(t, single(p), map[string]int{"cpu": 1})
		demand := 10.0 // busy slots wanted
		for range 5000 {
			demand = math.Max(0, math.Min(60, demand+rng.NormFloat64()*3))
			d := int(demand)
			h.run(1, func(r int) PoolMetrics {
				used := min(d, 4*r)
				return PoolMetrics{Replicas: r, Workers: r, Ready: r, SlotsTotal: 4 * r, SlotsUsed: used, QueueDepth: d - used}
			})
		}
		ds := h.decisions
		require.NotEmpty(t, ds)
		for i, d := range ds {
			require.GreaterOrEqual(t, d.To, p.MinReplicas)
			require.LessOrEqual(t, d.To, p.MaxReplicas)
			if i == 0 {
				continue
			}
			prev := ds[i-1]
			gap := d.Time.Sub(prev.Time)
			if d.Up() {
				require.GreaterOrEqual(t, gap, p.ScaleUp.Cooldown, "seed %d decision %d", seed, i)
			} else {
				require.GreaterOrEqual(t, gap, p.ScaleDown.Cooldown, "seed %d decision %d", seed, i)
				if prev.Up() {
					// A reversal from up to down needs a full low window after the pressure.
					require.GreaterOrEqual(t, gap, p.ScaleDown.Sustained, "seed %d decision %d", seed, i)
				}
			}
		}
	}
}

func TestStartingReplicasCountAsCapacity(t *testing.T) {
	t.Parallel()
	h := newHarness(t, single(testPool("cpu")), map[string]int{"cpu": 3})
	// 3 replicas, 1 ready (4 slots, all busy), 8 queued: the 2 starting replicas bring 8
	// slots, so nothing waits beyond them and utilisation is 4/12.
	starting := func(r int) PoolMetrics {
		return PoolMetrics{Replicas: r, Workers: 1, Ready: 1, SlotsTotal: 4, SlotsUsed: 4, QueueDepth: 8}
	}
	require.Empty(t, h.run(20, starting))
	// One more queued than the starting slots + threshold cover: grows.
	starting13 := func(r int) PoolMetrics {
		m := starting(r)
		m.QueueDepth = 13
		return m
	}
	ds := h.run(3, starting13)
	require.Len(t, ds, 1)
	require.Equal(t, 2, ds[0].Inputs.Starting)
	require.Equal(t, "queue depth 13 (5 beyond the slots of 2 starting) > 4 for 30s; +1", ds[0].Reason)
}

func TestScaleFromAndToZero(t *testing.T) {
	t.Parallel()
	p := testPool("gpu")
	p.MinReplicas = 0
	p.SlotsPerWorker = 1
	p.ScaleUp.QueueDepth = 5
	h := newHarness(t, single(p), map[string]int{"gpu": 0})
	empty := func(r int) PoolMetrics { return PoolMetrics{Replicas: r} }
	queued := func(r int) PoolMetrics { return PoolMetrics{Replicas: r, QueueDepth: 1} }
	tickGPU := func(l load) []Decision { return h.tick(map[string]load{"gpu": l}, nil) }
	for range 50 {
		require.Empty(t, tickGPU(empty))
	}
	// One run waits: below the threshold, but at zero replicas it would wait forever.
	require.Empty(t, tickGPU(queued))
	require.Empty(t, tickGPU(queued))
	ds := tickGPU(queued)
	require.Len(t, ds, 1)
	require.Equal(t, RuleQueueDepth, ds[0].Rule)
	require.Equal(t, 0, ds[0].From)
	require.Equal(t, 1, ds[0].To)
	// The worker starts (not ready yet): its slot covers the run, nothing more happens.
	for range 10 {
		require.Empty(t, tickGPU(queued))
	}
	// It ran the run and idles: after 5m (and the cooldown) back to zero.
	idle := func(r int) PoolMetrics { return PoolMetrics{Replicas: r, Workers: r, Ready: r, SlotsTotal: r} }
	var got []Decision
	for range 21 {
		got = append(got, tickGPU(idle)...)
	}
	require.Len(t, got, 1)
	require.Equal(t, RuleUtilizationLowSustained, got[0].Rule)
	require.Equal(t, 0, got[0].To)
}

func TestScalingPoolDecidesNothingButKeepsObserving(t *testing.T) {
	t.Parallel()
	h := newHarness(t, single(testPool("cpu")), map[string]int{"cpu": 2})
	scaling := func(l load) load {
		return func(r int) PoolMetrics { m := l(r); m.Scaling = true; return m }
	}
	require.Empty(t, h.run(10, scaling(busy(8, 20))))
	// The drain ends: the queue held all along, so the pool grows at once.
	ds := h.run(1, busy(8, 20))
	require.Len(t, ds, 1)
	require.Equal(t, RuleQueueDepth, ds[0].Rule)
	require.Equal(t, "queue depth 20 > 4 for 2m30s; +1", ds[0].Reason)
	// Not even min_replicas is enforced while scaling.
	h.replicas["cpu"] = 0
	require.Empty(t, h.run(1, scaling(busy(0, 0))))
}

func TestMissingMetricsRestartWindows(t *testing.T) {
	t.Parallel()
	h := newHarness(t, single(testPool("cpu")), map[string]int{"cpu": 2})
	require.Empty(t, h.run(2, busy(8, 10)))
	require.Empty(t, h.tick(nil, nil)) // no data for cpu
	require.Empty(t, h.run(2, busy(8, 10)))
	require.Len(t, h.run(1, busy(8, 10)), 1)
}

func TestPoolsScaleIndependently(t *testing.T) {
	t.Parallel()
	cfg := Config{Interval: 15 * time.Second, Pools: []PoolConfig{testPool("cpu"), testPool("gpu")}}
	h := newHarness(t, cfg, map[string]int{"cpu": 2, "gpu": 2})
	var got []Decision
	for range 3 {
		got = append(got, h.tick(map[string]load{"cpu": busy(8, 10), "gpu": busy(4, 0)}, nil)...)
	}
	require.Len(t, got, 1)
	require.Equal(t, "cpu", got[0].Pool)
	// The cpu scale-up starts no cooldown for gpu: gpu grows as soon as its own window holds.
	for range 2 {
		require.Empty(t, h.tick(map[string]load{"cpu": busy(12, 0), "gpu": busy(8, 10)}, nil))
	}
	ds := h.tick(map[string]load{"cpu": busy(12, 0), "gpu": busy(8, 10)}, nil)
	require.Len(t, ds, 1)
	require.Equal(t, "gpu", ds[0].Pool)
}

func TestDecisionsComeInConfigurationOrder(t *testing.T) {
	t.Parallel()
	cfg := Config{Interval: 15 * time.Second, Pools: []PoolConfig{testPool("b"), testPool("a")}, Gateway: testGateway()}
	h := newHarness(t, cfg, map[string]int{})
	ds := h.tick(map[string]load{"a": busy(0, 0), "b": busy(0, 0)}, &GatewayMetrics{})
	require.Len(t, ds, 3)
	require.Equal(t, []string{"b", "a", "gateway"}, []string{ds[0].Pool, ds[1].Pool, ds[2].Pool})
}

func TestSnapshotFromThePastIsIgnored(t *testing.T) {
	t.Parallel()
	e, err := NewEngine(single(testPool("cpu")))
	require.NoError(t, err)
	require.Len(t, e.Evaluate(Snapshot{Time: t0, Pools: map[string]PoolMetrics{"cpu": {}}}), 1)
	require.Empty(t, e.Evaluate(Snapshot{Time: t0.Add(-time.Second), Pools: map[string]PoolMetrics{"cpu": {}}}))
}

func TestEngineIsDeterministic(t *testing.T) {
	t.Parallel()
	series := func() []Decision {
		rng := rand.New(rand.NewPCG(7, 7))
		cfg := Config{Interval: 15 * time.Second, Pools: []PoolConfig{testPool("cpu"), testPool("gpu")}, Gateway: testGateway()}
		h := newHarness(t, cfg, map[string]int{"cpu": 1, "gpu": 1, "gateway": 1})
		for range 3000 {
			q := rng.IntN(30)
			h.tick(map[string]load{"cpu": busy(rng.IntN(40), q), "gpu": util(rng.Float64())},
				&GatewayMetrics{P95: time.Duration(rng.IntN(1000)) * time.Millisecond})
		}
		return h.decisions
	}
	a, b := series(), series()
	require.NotEmpty(t, a)
	require.Equal(t, a, b)
}
