package scheduler_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/stretchr/testify/require"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/pkg/store"
	"github.com/agentserver/agentserver/services/scheduler/scheduler"
)

// Lifting or raising an assistant's concurrency limit wakes the scheduler at once: the runs
// the limit held are claimed then, not at the next poll (a minute here), although nothing
// else happens that would wake it (no enqueue, no result).
func TestLiftedLimitWakesTheScheduler(t *testing.T) {
	st, addr := startScheduler(t, func(c *scheduler.Config) { c.PollInterval = time.Minute })
	ctx := t.Context()
	_, err := st.CreateAssistant(ctx, &store.Assistant{TenantID: store.DefaultTenant, ID: "a", SlotType: "cpu", Flow: flow, ConcurrencyLimit: 1})
	require.NoError(t, err)
	queueRuns(t, st, "a", 6)

	w := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "w", Slots: slots("cpu", 10)})
	require.Eventually(t, func() bool { return len(w.assignments()) == 1 }, 10*time.Second, 10*time.Millisecond, "limit 1: one run")
	setLimit := func(limit int32) {
		_, err := st.UpdateAssistant(ctx, store.DefaultTenant, "a", func(a *store.Assistant) error {
			a.ConcurrencyLimit = limit
			return nil
		})
		require.NoError(t, err)
	}

	setLimit(3)
	require.Eventually(t, func() bool { return len(w.assignments()) == 3 }, 10*time.Second, 10*time.Millisecond, "raised to 3")
	setLimit(0)
	require.Eventually(t, func() bool { return len(w.assignments()) == 6 }, 10*time.Second, 10*time.Millisecond, "lifted")
}

// Creating runs wakes the scheduler at once (the create statement's NOTIFY, one per slot
// type whatever the number of runs): with a poll of a minute and a worker waiting with
// free slots, each batch is assigned within seconds.
func TestCreatedRunsWakeTheScheduler(t *testing.T) {
	st, addr := startScheduler(t, func(c *scheduler.Config) { c.PollInterval = time.Minute })
	ctx := t.Context()
	_, err := st.CreateAssistant(ctx, &store.Assistant{TenantID: store.DefaultTenant, ID: "a", SlotType: "cpu", Flow: flow})
	require.NoError(t, err)
	w := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "w", Slots: slots("cpu", 10)})
	waitListening(t, st) // before the runs are created

	queueRuns(t, st, "a", 3)
	require.Eventually(t, func() bool { return len(w.assignments()) == 3 }, 10*time.Second, 10*time.Millisecond, "a batch of three")
	queueRuns(t, st, "a", 1)
	require.Eventually(t, func() bool { return len(w.assignments()) == 4 }, 10*time.Second, 10*time.Millisecond, "one more")
}

// Claiming back to back, the scheduler closes its LISTEN connection; when the queue is
// quiet again it listens again before it waits: with a poll of a minute, a run created
// after a burst is assigned within seconds, and a cancel requested during the burst
// reaches its worker.
func TestRunsCreatedAfterABurstWakeTheScheduler(t *testing.T) {
	st, addr := startScheduler(t, func(c *scheduler.Config) { c.PollInterval = time.Minute; c.RecoverInterval = time.Minute })
	ctx := t.Context()
	_, err := st.CreateAssistant(ctx, &store.Assistant{TenantID: store.DefaultTenant, ID: "a", SlotType: "cpu", Flow: flow})
	require.NoError(t, err)
	w := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "w", Slots: slots("cpu", 5000)})
	waitListening(t, st)

	// 4,000 runs at ~10,000 a second for ~0.4 s: claims of all the queue holds, faster
	// than the rate from which the scheduler claims back to back. Half-way, a cancel.
	for i := range 40 {
		queueRuns(t, st, "a", 100)
		if i == 20 {
			require.Eventually(t, func() bool { return len(w.assignments()) > 0 }, 10*time.Second, time.Millisecond)
			first := w.assignments()[0]
			id, err := uuid.Parse(strings.TrimPrefix(first.GetRun(), "runs/"))
			require.NoError(t, err)
			_, err = st.CancelRun(ctx, store.DefaultTenant, id)
			require.NoError(t, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	require.Eventually(t, func() bool { return len(w.assignments()) == 4000 }, 20*time.Second, 10*time.Millisecond, "the burst")
	require.Eventually(t, func() bool { return len(w.cancels()) == 1 }, 10*time.Second, 10*time.Millisecond, "the cancel")
	time.Sleep(100 * time.Millisecond) // the dispatcher waits again
	queueRuns(t, st, "a", 1)
	require.Eventually(t, func() bool { return len(w.assignments()) == 4001 }, 10*time.Second, 10*time.Millisecond, "the run after it")
}

// waitListening waits until the scheduler's LISTEN connection listens: its last statement
// listens on the cancel channel, after the queue's.
func waitListening(t *testing.T, st *store.Store) {
	t.Helper()
	require.Eventually(t, func() bool {
		var n int
		err := st.Pool().QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND query = $1`, `LISTEN "`+store.CancelChannel+`"`).Scan(&n)
		return err == nil && n == 1
	}, 10*time.Second, 10*time.Millisecond, "the scheduler listens")
}

// A worker's freed slots are refilled without the poll (a minute here), whenever the
// results free them, with runs queued behind, a claim for its other slots often in flight
// meanwhile: a stand-in with 4 slots answers its runs one at a time, 0–2 ms apart,
// through a backlog of 300.
func TestFreedSlotsAreRefilledWithoutThePoll(t *testing.T) {
	st, addr := startScheduler(t, func(c *scheduler.Config) { c.PollInterval = time.Minute })
	ctx := t.Context()
	_, err := st.CreateAssistant(ctx, &store.Assistant{TenantID: store.DefaultTenant, ID: "a", SlotType: "cpu", Flow: flow})
	require.NoError(t, err)
	const runs = 300
	queueRuns(t, st, "a", runs)
	w := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "w", Slots: slots("cpu", 4)})

	done := make(chan struct{})
	defer close(done)
	go func() {
		answered := 0
		for {
			select {
			case <-done:
				return
			case <-time.After(time.Duration(answered%3) * time.Millisecond):
			}
			got := w.assignments()
			if answered < len(got) {
				// One at a time: the others' slots stay taken meanwhile.
				a := got[answered]
				if w.stream.Send(&schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Result{Result: &schedulerv1.RunResult{
					Run: a.GetRun(), Epoch: a.GetEpoch(), Outcome: schedulerv1.RunResult_OUTCOME_SUCCEEDED, State: a.GetState(),
				}}}) != nil {
					return
				}
				answered++
			}
		}
	}()
	require.Eventually(t, func() bool { return len(w.assignments()) == runs }, 30*time.Second, 10*time.Millisecond,
		"every run assigned (a missed wake-up leaves the dispatcher waiting for the poll)")
}
