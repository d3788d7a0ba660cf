package controller

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/services/autoscaler/internal/driver"
	"github.com/agentserver/agentserver/services/autoscaler/internal/policy"
	"github.com/agentserver/agentserver/services/autoscaler/internal/standin"
)

// loadSource reports a pool whose workers are the process driver's stand-ins, under a
// load the test sets.
type loadSource struct {
	drv  *driver.Process
	mu   sync.Mutex
	busy int // slots wanted
}

func (s *loadSource) setBusy(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.busy = n
}

func (s *loadSource) Snapshot(context.Context) (policy.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := len(s.drv.PIDs("cpu"))
	used := min(s.busy, 4*r)
	return policy.Snapshot{Pools: map[string]policy.PoolMetrics{"cpu": {
		QueueDepth: s.busy - used, Workers: r, Ready: r, SlotsTotal: 4 * r, SlotsUsed: used,
	}}}, nil
}

// The loop end to end on one host: a burst grows the pool of stand-in worker-agents to
// its max, idleness shrinks it back to min by draining (SIGTERM, wait for exit), and the
// direction changes exactly once.
func TestRunScalesLocalProcessesUpAndDrainsThemDown(t *testing.T) {
	t.Parallel()
	self, err := os.Executable()
	require.NoError(t, err)
	dir := t.TempDir()
	drv, err := driver.NewProcess(driver.ProcessConfig{
		Pools: map[string]driver.ProcessPool{"cpu": {
			Binary: self, Args: []string{"-test.run=^$"},
			Env: []string{standin.Env + "=1", standin.EnvDir + "=" + dir},
		}},
		StopTimeout: time.Minute,
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = drv.Shutdown(context.Background()) })

	p := pool("cpu")
	p.MaxReplicas = 3
	p.ScaleDown.Sustained = 50 * time.Millisecond
	src := &loadSource{drv: drv, busy: 100}
	c, err := New(Config{Policy: policy.Config{Interval: 10 * time.Millisecond, Pools: []policy.PoolConfig{p}}, Source: src, Driver: drv})
	require.NoError(t, err)
	require.NoError(t, c.Check(t.Context()))

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()

	settledAt := func(n int) func() bool {
		return func() bool {
			st := c.Status().Pools[0]
			cur, err := drv.Current(ctx, "cpu")
			return err == nil && cur == n && !st.Scaling && st.Desired == n
		}
	}
	eventually(t, "the burst to grow the pool to max", settledAt(3))
	started := drv.PIDs("cpu")
	require.Len(t, started, 3)
	// A process that gets SIGTERM before it installs its handler just dies; the real
	// worker-agent too, but with no run to lose. Wait for the stand-ins to be up.
	for _, pid := range started {
		eventually(t, "the stand-in to start", func() bool {
			_, err := os.Stat(standin.Marker(dir, pid, standin.Started))
			return err == nil
		})
	}

	src.setBusy(0)
	eventually(t, "idleness to shrink the pool to min", settledAt(1))
	kept := drv.PIDs("cpu")
	require.Equal(t, started[:1], kept, "the oldest worker stays")
	for _, pid := range started[1:] {
		require.FileExists(t, standin.Marker(dir, pid, standin.Draining))
		require.FileExists(t, standin.Marker(dir, pid, standin.Exited), "drained and exited cleanly")
	}

	cancel()
	require.NoError(t, <-done)

	var rules []policy.Rule
	var dirs []bool
	for _, d := range c.Decisions() {
		require.Equal(t, OutcomeApplied, d.Outcome, d.Error)
		rules = append(rules, d.Rule)
		dirs = append(dirs, d.Up())
	}
	require.Equal(t, []policy.Rule{policy.RuleMinReplicas, policy.RuleQueueDepth, policy.RuleQueueDepth,
		policy.RuleUtilizationLowSustained, policy.RuleUtilizationLowSustained}, rules)
	require.Equal(t, []bool{true, true, true, false, false}, dirs)
}
