package scheduler_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/pkg/store"
	"github.com/agentserver/agentserver/services/scheduler/scheduler"
)

// The scheduler vacuums the queue tables itself once it has claimed QueueVacuumRuns runs
// since its last vacuum, not before.
func TestSchedulerVacuumsTheQueueAfterQueueVacuumRunsClaims(t *testing.T) {
	st, addr := startScheduler(t, func(c *scheduler.Config) { c.QueueVacuumRuns = 20 })
	ctx := t.Context()
	_, err := st.CreateAssistant(ctx, &store.Assistant{TenantID: store.DefaultTenant, ID: "a", SlotType: "cpu", Flow: flow})
	require.NoError(t, err)
	create := func(n int) { queueRuns(t, st, "a", n) }
	vacuums := manualVacuums(st)
	w := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "w", Slots: slots("cpu", 30)})

	create(15)
	require.Eventually(t, func() bool { return len(w.assignments()) == 15 }, 10*time.Second, 10*time.Millisecond)
	require.Never(t, func() bool { return vacuums() != 0 }, 300*time.Millisecond, 20*time.Millisecond, "15 claims: no vacuum yet")

	create(10)
	require.Eventually(t, func() bool { return len(w.assignments()) == 25 }, 10*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { return vacuums() == 1 }, 10*time.Second, 20*time.Millisecond, "25 claims: one vacuum")
	require.Never(t, func() bool { return vacuums() != 1 }, 300*time.Millisecond, 20*time.Millisecond)
}

// After a vacuum the scheduler waits for the interval that vacuum's cost calls for
// (vacuumInterval), not for QueueVacuumRuns again: a vacuum of a queue of 2,000 runs
// claimed 30 at a time costs more than 20 claimed runs' worth of dead entries.
func TestSchedulerSpacesVacuumsByTheirCost(t *testing.T) {
	st, addr := startScheduler(t, func(c *scheduler.Config) { c.QueueVacuumRuns = 20 })
	ctx := t.Context()
	_, err := st.CreateAssistant(ctx, &store.Assistant{TenantID: store.DefaultTenant, ID: "a", SlotType: "cpu", Flow: flow})
	require.NoError(t, err)
	queueRuns(t, st, "a", 2000)
	vacuums := manualVacuums(st)

	w1 := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "w1", Slots: slots("cpu", 30)})
	require.Eventually(t, func() bool { return len(w1.assignments()) == 30 }, 10*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { return vacuums() == 1 }, 10*time.Second, 20*time.Millisecond, "30 claims: one vacuum")

	w2 := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "w2", Slots: slots("cpu", 30)})
	require.Eventually(t, func() bool { return len(w2.assignments()) == 30 }, 10*time.Second, 10*time.Millisecond)
	require.Never(t, func() bool { return vacuums() != 1 }, 500*time.Millisecond, 20*time.Millisecond,
		"30 more claims, fewer than the interval the first vacuum's cost set")
}

// queueRuns creates n runs of assistant.
func queueRuns(t *testing.T, st *store.Store, assistant string, n int) {
	t.Helper()
	runs := make([]store.NewRun, n)
	for i := range runs {
		runs[i] = store.NewRun{AssistantID: assistant}
	}
	_, err := st.CreateRuns(t.Context(), store.DefaultTenant, runs, store.RunDefaults{MaxAttempts: 1, Timeout: time.Hour, MaxTimeout: time.Hour})
	require.NoError(t, err)
}

// manualVacuums returns a function that counts the vacuums of run_queue other than
// autovacuum's. Eventually and Never call it from their own goroutine, which may still
// run once the test has ended: no test context and no t there (-1 on error).
func manualVacuums(st *store.Store) func() int64 {
	return func() (n int64) {
		qctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := st.Pool().QueryRow(qctx, `SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'run_queue'`).Scan(&n); err != nil {
			return -1
		}
		return n
	}
}
