package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/proctest"
	"github.com/agentserver/agentserver/pkg/store"
)

// Scheduler failover: workers connected to the first of two schedulers move to the
// second when the first is killed -9, keep the runs they hold (the second adopts their
// leases) and finish them: nothing lost, nothing executed twice. Then the schedulers are
// killed in turn, each restarted after its workers moved: every time the workers must be
// back before their leases expire, so the runs in flight still finish under their first
// claim.
func TestSchedulerFailover(t *testing.T) {
	const rounds = 6
	c := newCluster(t)
	s1 := c.startScheduler()
	s2 := c.startScheduler()
	both := []*scheduler{s1, s2}
	w1 := c.startWorker(workerOpts{slots: "cpu=4", schedulers: both})
	w2 := c.startWorker(workerOpts{slots: "cpu=4", schedulers: both})
	for _, w := range []*worker{w1, w2} {
		sched, _ := c.workerScheduler(w.id)
		require.Equal(t, s1.id, sched, "workers try the first address first")
	}
	c.createAssistant("work", assistantOpts{})
	// 8 long runs fill the 8 slots for the whole test; 8 short ones wait behind them.
	var inputs []map[string]any
	for i := range 16 {
		ms := 6000
		if i >= 8 {
			ms = 200
		}
		inputs = append(inputs, map[string]any{"ms": ms, "i": i})
	}
	names := c.createRuns("work", inputs)
	c.waitStarted(names[:8], 0)

	from, to := s1, s2
	for round := range rounds {
		from.Kill()
		for _, w := range []*worker{w1, w2} {
			proctest.Eventually(t, 30*time.Second, fmt.Sprintf("round %d: %s on %s", round+1, w.id, to.id), func() (bool, string) {
				sched, state := c.workerScheduler(w.id)
				return sched == to.id && state == store.WorkerReady, sched
			})
		}
		from.restart()
		from, to = to, from
	}
	c.waitAllTerminal(60 * time.Second)

	runs := c.dbRuns()
	execs := executions(readRecords(t, c.records))
	finished(t, execs)
	for _, n := range names {
		r := runs[n]
		require.Equal(t, store.StateSucceeded, r.state, "run %s", n)
		e := execs[claimKey{n, r.epoch}]
		require.NotNil(t, e, "run %s: no execution under the accepted epoch", n)
		require.Equal(t, 1, e.starts)
		require.Equal(t, 1, e.dones)
	}
	require.Len(t, execs, len(names), "every run executed once: in-flight runs were adopted, not redone")
	for _, n := range names[:8] {
		require.EqualValues(t, 1, runs[n].epoch, "run %s, in flight through %d scheduler kills, kept its first claim", n, rounds)
	}
	var expired int
	require.NoError(t, c.db.Pool().QueryRow(context.Background(),
		`SELECT count(*) FROM run_events WHERE type = 'state' AND data->>'reason' = 'lease_expired'`).Scan(&expired))
	require.Zero(t, expired, "no lease expired")
	t.Logf("failover: %d runs, 8 in flight through %d scheduler kills, %d executions, all SUCCEEDED", len(names), rounds, len(execs))
}

// Scheduler kills while claims fly: a scheduler killed -9 right after claiming runs for a
// worker takes their assignments with it; the worker, alive and heartbeating to the other
// scheduler, never heard of them. Those claims must expire and be requeued (only the
// leases a session holds are renewed), not stay RUNNING with nobody executing them.
// Schedulers are killed and restarted in turn while tiny runs keep them claiming.
func TestSchedulerKillsWhileDispatching(t *testing.T) {
	const (
		runs  = 1500
		kills = 6
	)
	c := newCluster(t)
	s1 := c.startScheduler()
	s2 := c.startScheduler()
	orders := [][]*scheduler{{s1, s2}, {s2, s1}}
	for i := range 4 {
		c.startWorker(workerOpts{slots: "cpu=4", schedulers: orders[i%2]})
	}
	c.createAssistant("tiny", assistantOpts{config: map[string]any{"ms": 0}})
	inputs := make([]map[string]any, runs)
	for i := range inputs {
		inputs[i] = map[string]any{"i": i}
	}
	names := c.createRuns("tiny", inputs)
	terminal := func() int {
		var n int
		require.NoError(t, c.db.Pool().QueryRow(context.Background(),
			`SELECT count(*) FROM runs WHERE state IN (3, 4, 5, 6)`).Scan(&n))
		return n
	}
	for k := range kills {
		proctest.Eventually(t, 60*time.Second, "progress before the next kill", func() (bool, string) {
			n := terminal()
			return n >= (k+1)*runs/(kills+2), fmt.Sprintf("%d terminal", n)
		})
		victim := []*scheduler{s1, s2}[k%2]
		victim.Kill()
		victim.restart()
	}
	c.waitAllTerminal(60 * time.Second)
	runsByName := c.dbRuns()
	execs := executions(readRecords(t, c.records))
	for _, n := range names {
		r := runsByName[n]
		require.Equal(t, store.StateSucceeded, r.state, "run %s", n)
		e := execs[claimKey{n, r.epoch}]
		require.NotNil(t, e, "run %s has no execution under its accepted epoch", n)
		require.Equal(t, 1, e.starts, "run %s: one execution under its accepted epoch", n)
		require.Equal(t, 1, e.dones)
	}
	var expired int
	require.NoError(t, c.db.Pool().QueryRow(context.Background(),
		`SELECT count(*) FROM run_events WHERE type = 'state' AND data->>'reason' = 'lease_expired'`).Scan(&expired))
	t.Logf("scheduler kills while dispatching: %d runs, %d scheduler kills, %d claims expired and requeued, %d executions",
		runs, kills, expired, len(execs))
}
