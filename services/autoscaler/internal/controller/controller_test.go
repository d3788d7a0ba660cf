package controller

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/services/autoscaler/internal/driver"
	"github.com/agentserver/agentserver/services/autoscaler/internal/policy"
	"github.com/agentserver/agentserver/services/autoscaler/internal/standin"
)

func TestMain(m *testing.M) {
	if standin.Active() {
		os.Exit(standin.Main())
	}
	os.Exit(m.Run())
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// fakeClock advances by one interval every time it is read by an evaluation.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fakeSource serves whatever snapshot (or error) the test sets.
type fakeSource struct {
	mu   sync.Mutex
	snap policy.Snapshot
	err  error
}

func (s *fakeSource) Set(snap policy.Snapshot, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snap, s.err = snap, err
}

func (s *fakeSource) Snapshot(context.Context) (policy.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Copy the map: the controller fills in replicas.
	out := s.snap
	out.Pools = map[string]policy.PoolMetrics{}
	for k, v := range s.snap.Pools {
		out.Pools[k] = v
	}
	return out, s.err
}

// fakeDriver keeps counts in memory; Scale of a held pool blocks until released.
type fakeDriver struct {
	mu       sync.Mutex
	counts   map[string]int
	calls    []string
	hold     map[string]chan struct{}
	fail     map[string]error
	curFails map[string]error
}

func newFakeDriver(counts map[string]int) *fakeDriver {
	return &fakeDriver{counts: counts, hold: map[string]chan struct{}{}, fail: map[string]error{}, curFails: map[string]error{}}
}

func (d *fakeDriver) Current(_ context.Context, pool string) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.curFails[pool]; err != nil {
		return 0, err
	}
	n, ok := d.counts[pool]
	if !ok {
		return 0, fmt.Errorf("fake: %q: %w", pool, driver.ErrUnknownPool)
	}
	return n, nil
}

func (d *fakeDriver) Scale(ctx context.Context, pool string, n int) error {
	d.mu.Lock()
	d.calls = append(d.calls, fmt.Sprintf("%s=%d", pool, n))
	hold, err := d.hold[pool], d.fail[pool]
	d.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.counts[pool] = n
	return nil
}

func (d *fakeDriver) Calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.calls...)
}

func pool(name string) policy.PoolConfig {
	return policy.PoolConfig{
		Name: name, SlotType: name, MinReplicas: 1, MaxReplicas: 5, SlotsPerWorker: 4,
		ScaleUp: policy.ScaleUp{QueueDepth: 4, Utilization: 0.8, Step: policy.Step{Count: 1}},
		ScaleDown: policy.ScaleDown{Utilization: 0.2, Sustained: time.Minute,
			Step: policy.Step{Count: 1}},
	}
}

type fixture struct {
	c     *Controller
	src   *fakeSource
	drv   *fakeDriver
	clock *fakeClock
}

func newFixture(t *testing.T, cfg policy.Config, counts map[string]int, history int) *fixture {
	t.Helper()
	if cfg.Interval == 0 {
		cfg.Interval = 15 * time.Second
	}
	f := &fixture{src: &fakeSource{}, drv: newFakeDriver(counts), clock: &fakeClock{now: t0}}
	c, err := New(Config{Policy: cfg, Source: f.src, Driver: f.drv, Clock: f.clock.Now, History: history})
	require.NoError(t, err)
	f.c = c
	t.Cleanup(func() {
		c.cancelApply()
		c.applying.Wait()
	})
	return f
}

// eval runs one evaluation at the next instant.
func (f *fixture) eval(t *testing.T, pools map[string]policy.PoolMetrics, gw *policy.GatewayMetrics) []Record {
	t.Helper()
	f.src.Set(policy.Snapshot{Pools: pools, Gateway: gw}, nil)
	recs, err := f.c.Evaluate(t.Context())
	require.NoError(t, err)
	f.clock.Advance(15 * time.Second)
	return recs
}

// settled waits until no decision is being applied.
func (f *fixture) settled(t *testing.T) {
	t.Helper()
	eventually(t, "decisions to be applied", func() bool {
		for _, p := range f.c.Status().Pools {
			if p.Scaling {
				return false
			}
		}
		return true
	})
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func idle(r int) policy.PoolMetrics {
	return policy.PoolMetrics{Workers: r, Ready: r, SlotsTotal: 4 * r}
}

func TestEvaluateAppliesAndRecordsDecisions(t *testing.T) {
	t.Parallel()
	f := newFixture(t, policy.Config{Pools: []policy.PoolConfig{pool("cpu")}}, map[string]int{"cpu": 0}, 0)
	recs := f.eval(t, map[string]policy.PoolMetrics{"cpu": {QueueDepth: 2}}, nil)
	require.Len(t, recs, 1)
	require.Equal(t, policy.RuleMinReplicas, recs[0].Rule)
	require.Equal(t, uint64(1), recs[0].ID)
	require.Equal(t, OutcomeApplying, recs[0].Outcome)
	require.Equal(t, 2, recs[0].Inputs.QueueDepth)
	f.settled(t)
	require.Equal(t, []string{"cpu=1"}, f.drv.Calls())

	ds := f.c.Decisions()
	require.Len(t, ds, 1)
	require.Equal(t, OutcomeApplied, ds[0].Outcome)
	require.Equal(t, t0, ds[0].Time)
	require.Equal(t, 0, ds[0].From)
	require.Equal(t, 1, ds[0].To)
	require.False(t, ds[0].Finished.IsZero())

	// 10 queued: queue_depth fires (no sustain configured), from the driver's count.
	recs = f.eval(t, map[string]policy.PoolMetrics{"cpu": {QueueDepth: 10, Workers: 1, Ready: 1, SlotsTotal: 4, SlotsUsed: 4}}, nil)
	require.Len(t, recs, 1)
	require.Equal(t, policy.RuleQueueDepth, recs[0].Rule)
	require.Equal(t, 1, recs[0].From)
	require.Equal(t, 2, recs[0].To)
	f.settled(t)

	st := f.c.Status()
	require.Equal(t, uint64(2), st.Evaluations)
	require.Equal(t, t0.Add(15*time.Second), st.LastEvaluation)
	require.Len(t, st.Pools, 1)
	ps := st.Pools[0]
	require.Equal(t, "cpu", ps.Pool)
	require.Equal(t, 1, ps.Current, "as observed at the last evaluation")
	require.Equal(t, 2, ps.Desired)
	require.Equal(t, 1, ps.MinReplicas)
	require.Equal(t, 5, ps.MaxReplicas)
	require.True(t, ps.Observed)
	require.Equal(t, 10, ps.Metrics.QueueDepth)
	require.NotNil(t, ps.LastDecision)
	require.Equal(t, uint64(2), ps.LastDecision.ID)
	require.Equal(t, map[string]map[policy.Rule]uint64{"cpu": {policy.RuleMinReplicas: 1, policy.RuleQueueDepth: 1}}, st.DecisionCounts)
}

func TestPoolBeingScaledIsHeldWhileOthersGoOn(t *testing.T) {
	t.Parallel()
	f := newFixture(t, policy.Config{Pools: []policy.PoolConfig{pool("cpu"), pool("gpu")}},
		map[string]int{"cpu": 3, "gpu": 1}, 0)
	release := make(chan struct{})
	f.drv.hold["cpu"] = release
	busyGPU := policy.PoolMetrics{QueueDepth: 100, Workers: 1, Ready: 1, SlotsTotal: 4, SlotsUsed: 4}
	// cpu idles for the minute the policy asks, then shrinks: the drain hangs.
	for range 4 {
		require.Empty(t, f.eval(t, map[string]policy.PoolMetrics{"cpu": idle(3), "gpu": idle(1)}, nil))
	}
	recs := f.eval(t, map[string]policy.PoolMetrics{"cpu": idle(3), "gpu": busyGPU}, nil)
	require.Len(t, recs, 2)
	require.Equal(t, "cpu", recs[0].Pool)
	require.Equal(t, policy.RuleUtilizationLowSustained, recs[0].Rule)
	require.Equal(t, "gpu", recs[1].Pool)
	eventually(t, "gpu to be applied", func() bool { return !f.c.Status().Pools[1].Scaling })
	// While cpu drains, it gets no decision however idle it is; gpu keeps growing.
	for i := range 3 {
		recs = f.eval(t, map[string]policy.PoolMetrics{"cpu": idle(3), "gpu": busyGPU}, nil)
		require.Len(t, recs, 1, "evaluation %d", i)
		require.Equal(t, "gpu", recs[0].Pool)
		eventually(t, "gpu to be applied", func() bool { return !f.c.Status().Pools[1].Scaling })
		st := f.c.Status()
		require.True(t, st.Pools[0].Scaling)
		require.True(t, st.Pools[0].Metrics.Scaling)
		require.Equal(t, OutcomeApplying, st.Pools[0].LastDecision.Outcome)
	}
	close(release)
	f.settled(t)
	require.Equal(t, OutcomeApplied, f.c.Decisions()[0].Outcome)
	// Drained: the next decision for cpu waits for nothing but the policy.
	recs = f.eval(t, map[string]policy.PoolMetrics{"cpu": idle(2), "gpu": idle(5)}, nil)
	require.Len(t, recs, 1)
	require.Equal(t, "cpu", recs[0].Pool)
	require.Equal(t, 2, recs[0].From)
	require.Equal(t, 1, recs[0].To)
}

func TestDriverFailureIsRecorded(t *testing.T) {
	t.Parallel()
	f := newFixture(t, policy.Config{Pools: []policy.PoolConfig{pool("cpu")}}, map[string]int{"cpu": 0}, 0)
	f.drv.fail["cpu"] = errors.New("docker: no such service")
	f.eval(t, map[string]policy.PoolMetrics{"cpu": {}}, nil)
	f.settled(t)
	ds := f.c.Decisions()
	require.Len(t, ds, 1)
	require.Equal(t, OutcomeFailed, ds[0].Outcome)
	require.Equal(t, "docker: no such service", ds[0].Error)
	// The count did not change: the next evaluation asks again.
	recs := f.eval(t, map[string]policy.PoolMetrics{"cpu": {}}, nil)
	require.Len(t, recs, 1)
	require.Equal(t, policy.RuleMinReplicas, recs[0].Rule)
}

func TestSourceErrorRestartsWindows(t *testing.T) {
	t.Parallel()
	p := pool("cpu")
	p.ScaleUp.Sustained = 30 * time.Second
	f := newFixture(t, policy.Config{Pools: []policy.PoolConfig{p}}, map[string]int{"cpu": 2}, 0)
	busy := map[string]policy.PoolMetrics{"cpu": {QueueDepth: 20, Workers: 2, Ready: 2, SlotsTotal: 8, SlotsUsed: 8}}
	require.Empty(t, f.eval(t, busy, nil))
	require.Empty(t, f.eval(t, busy, nil))

	f.src.Set(policy.Snapshot{}, errors.New("scheduler unavailable"))
	recs, err := f.c.Evaluate(t.Context())
	require.ErrorContains(t, err, "reading metrics: scheduler unavailable")
	require.Empty(t, recs)
	f.clock.Advance(15 * time.Second)
	st := f.c.Status()
	require.Equal(t, "metrics source: scheduler unavailable", st.Error)
	require.False(t, st.Pools[0].Observed)
	require.Equal(t, "metrics source: scheduler unavailable", st.Pools[0].Error)

	// 45s of pressure in all, but not sustained across the gap: fires 30s after it.
	require.Empty(t, f.eval(t, busy, nil))
	require.Empty(t, f.eval(t, busy, nil))
	require.Len(t, f.eval(t, busy, nil), 1)
	require.Empty(t, f.c.Status().Error)
}

func TestPoolWithoutDataOrDriverCount(t *testing.T) {
	t.Parallel()
	cfg := policy.Config{Pools: []policy.PoolConfig{pool("cpu"), pool("gpu")}, Gateway: &policy.GatewayConfig{
		Name: "gateway", MinReplicas: 1, MaxReplicas: 3, LatencyP95Target: time.Second, DownRatio: 0.5,
		Up: policy.GatewayAction{Step: policy.Step{Count: 1}}, Down: policy.GatewayAction{Step: policy.Step{Count: 1}},
	}}
	f := newFixture(t, cfg, map[string]int{"cpu": 0, "gpu": 0, "gateway": 1}, 0)
	f.drv.curFails["gpu"] = errors.New("docker daemon not reachable")
	recs := f.eval(t, map[string]policy.PoolMetrics{"gpu": {}}, nil)
	require.Empty(t, recs)
	st := f.c.Status()
	require.Equal(t, "no metrics for this pool", st.Pools[0].Error)
	require.Equal(t, "driver: docker daemon not reachable", st.Pools[1].Error)
	require.Equal(t, "no gateway latency", st.Pools[2].Error)
	require.True(t, st.Pools[2].Gateway)

	// Gateway latency arrives: the gateways scale on it.
	recs = f.eval(t, map[string]policy.PoolMetrics{}, &policy.GatewayMetrics{P95: 3 * time.Second})
	require.Len(t, recs, 1)
	require.Equal(t, "gateway", recs[0].Pool)
	require.Equal(t, policy.RuleLatencyP95, recs[0].Rule)
	require.Equal(t, 3*time.Second, recs[0].Inputs.LatencyP95)
	f.settled(t)
	require.Equal(t, []string{"gateway=2"}, f.drv.Calls())
	st = f.c.Status()
	require.Equal(t, 3*time.Second, st.Pools[2].LatencyP95)
	require.Equal(t, 2, st.Pools[2].Desired)
}

func TestHistoryIsBounded(t *testing.T) {
	t.Parallel()
	f := newFixture(t, policy.Config{Pools: []policy.PoolConfig{pool("cpu")}}, map[string]int{"cpu": 0}, 3)
	f.drv.fail["cpu"] = errors.New("no") // the count stays 0: min_replicas fires every time
	for range 5 {
		require.Len(t, f.eval(t, map[string]policy.PoolMetrics{"cpu": {}}, nil), 1)
		f.settled(t)
	}
	ds := f.c.Decisions()
	require.Len(t, ds, 3)
	require.Equal(t, []uint64{3, 4, 5}, []uint64{ds[0].ID, ds[1].ID, ds[2].ID})
	require.Equal(t, t0.Add(4*15*time.Second), ds[2].Time)
	require.Equal(t, uint64(5), f.c.Status().Pools[0].LastDecision.ID)
	require.Equal(t, uint64(5), f.c.Status().DecisionCounts["cpu"][policy.RuleMinReplicas])
}

func TestCheckReportsPoolsTheDriverDoesNotKnow(t *testing.T) {
	t.Parallel()
	f := newFixture(t, policy.Config{Pools: []policy.PoolConfig{pool("cpu"), pool("gpu")}}, map[string]int{"cpu": 0}, 0)
	err := f.c.Check(t.Context())
	require.ErrorIs(t, err, driver.ErrUnknownPool)
	require.ErrorContains(t, err, `policy pool "gpu"`)
	require.NotContains(t, err.Error(), `"cpu"`)
}

func TestNewRejectsIncompleteConfig(t *testing.T) {
	t.Parallel()
	cfg := policy.Config{Interval: time.Second, Pools: []policy.PoolConfig{pool("cpu")}}
	_, err := New(Config{Policy: cfg, Driver: newFakeDriver(nil)})
	require.ErrorContains(t, err, "no metrics source configured")
	_, err = New(Config{Policy: cfg, Source: &fakeSource{}})
	require.ErrorContains(t, err, "no driver configured")
	_, err = New(Config{Policy: policy.Config{}, Source: &fakeSource{}, Driver: newFakeDriver(nil)})
	require.ErrorContains(t, err, "invalid policy")
}
