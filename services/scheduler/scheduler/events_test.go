package scheduler_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/pkg/store"
	"github.com/agentserver/agentserver/services/scheduler/scheduler"
)

// holdEvents gives the scheduler an event hold of hold (with a heartbeat interval above it).
func holdEvents(hold time.Duration) func(*scheduler.Config) {
	return func(c *scheduler.Config) {
		c.EventHold = hold
		c.HeartbeatInterval = max(c.HeartbeatInterval, 2*hold)
		c.LeaseTTL = max(c.LeaseTTL, 2*c.HeartbeatInterval)
	}
}

// startOneRun starts a scheduler with mods, creates one run and connects a stand-in
// worker, and returns the run's assignment.
func startOneRun(t *testing.T, mods ...func(*scheduler.Config)) (*store.Store, *standInWorker, *schedulerv1.Assignment) {
	t.Helper()
	st, addr := startScheduler(t, mods...)
	ctx := t.Context()
	_, err := st.CreateAssistant(ctx, &store.Assistant{TenantID: store.DefaultTenant, ID: "a", SlotType: "cpu", Flow: flow})
	require.NoError(t, err)
	_, err = st.CreateRuns(ctx, store.DefaultTenant, []store.NewRun{{AssistantID: "a"}},
		store.RunDefaults{MaxAttempts: 1, Timeout: time.Hour, MaxTimeout: time.Hour})
	require.NoError(t, err)
	w := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "w", Pool: "cpu", Slots: slots("cpu", 1)})
	require.Eventually(t, func() bool { return len(w.assignments()) == 1 }, 20*time.Second, 10*time.Millisecond)
	return st, w, w.assignments()[0]
}

func (w *standInWorker) stepStarted(t *testing.T, a *schedulerv1.Assignment, step string) {
	t.Helper()
	require.NoError(t, w.stream.Send(&schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Event{Event: &schedulerv1.RunEvent{
		Run: a.GetRun(), Epoch: a.GetEpoch(), Type: "step_started",
		Data: &structpb.Struct{Fields: map[string]*structpb.Value{"step": structpb.NewStringValue(step)}},
	}}}))
}

// workerEvents returns the events of the assignment's run other than its QUEUED and
// RUNNING ones (which the scheduler writes), by type.
func workerEvents(t *testing.T, st *store.Store, a *schedulerv1.Assignment) map[string]store.RunEvent {
	t.Helper()
	id := runID(t, a)
	evs, err := st.ListRunEvents(t.Context(), store.DefaultTenant, id, 0, 100)
	require.NoError(t, err)
	out := map[string]store.RunEvent{}
	for _, e := range evs {
		if e.Data["state"] == "QUEUED" || e.Data["state"] == "RUNNING" {
			continue
		}
		key := e.Type
		if s, ok := e.Data["state"].(string); ok {
			key += ":" + s
		}
		out[key] = e
	}
	return out
}

// An event that arrives a while before its run's result (in an earlier message batch) is
// held and written by the statement that writes the result: both rows carry the same
// transaction time, the event first.
func TestEventsAreWrittenWithTheirResult(t *testing.T) {
	t.Parallel()
	st, w, a := startOneRun(t, holdEvents(5*time.Second))
	w.stepStarted(t, a, "x")
	// Batches of the session come and go meanwhile (the heartbeat is not sent by the
	// stand-in; the result alone makes the next batch).
	time.Sleep(200 * time.Millisecond)
	require.NotContains(t, workerEvents(t, st, a), "step_started", "held, not written on its own")
	w.succeed(t, a)
	require.Eventually(t, func() bool { return len(workerEvents(t, st, a)) == 2 }, 10*time.Second, 10*time.Millisecond)
	evs := workerEvents(t, st, a)
	started, ended := evs["step_started"], evs["state:SUCCEEDED"]
	require.Equal(t, map[string]any{"step": "x"}, started.Data)
	require.Less(t, started.Seq, ended.Seq)
	require.True(t, started.CreateTime.Equal(ended.CreateTime), "one transaction: %s and %s", started.CreateTime, ended.CreateTime)
}

// Events of a run that goes on are written once they have been held for EventHold,
// before its result.
func TestHeldEventsAreWrittenAfterTheHold(t *testing.T) {
	t.Parallel()
	st, w, a := startOneRun(t, holdEvents(100*time.Millisecond))
	w.stepStarted(t, a, "x")
	require.Eventually(t, func() bool { return len(workerEvents(t, st, a)) == 1 }, 10*time.Second, 10*time.Millisecond)
	w.succeed(t, a)
	require.Eventually(t, func() bool { return len(workerEvents(t, st, a)) == 2 }, 10*time.Second, 10*time.Millisecond)
	evs := workerEvents(t, st, a)
	require.Less(t, evs["step_started"].Seq, evs["state:SUCCEEDED"].Seq)
	require.True(t, evs["step_started"].CreateTime.Before(evs["state:SUCCEEDED"].CreateTime))
}

// Held events are written before a checkpoint of the batch (the worker moves on to the
// next step once it is acknowledged) and when the worker's session ends.
func TestHeldEventsAreWrittenBeforeACheckpointAndAtTheEnd(t *testing.T) {
	t.Parallel()
	hold := 5 * time.Second
	st, w, a := startOneRun(t, holdEvents(hold))
	w.stepStarted(t, a, "x")
	time.Sleep(100 * time.Millisecond)
	require.NoError(t, w.stream.Send(&schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Checkpoint{Checkpoint: &schedulerv1.Checkpoint{
		Run: a.GetRun(), Epoch: a.GetEpoch(), NextStep: "y", State: &structpb.Struct{},
	}}}))
	require.Eventually(t, func() bool { return len(workerEvents(t, st, a)) == 1 }, hold/2, 10*time.Millisecond)

	began := time.Now()
	w.stepStarted(t, a, "y")
	time.Sleep(100 * time.Millisecond)
	require.Len(t, workerEvents(t, st, a), 1, "the second step's start is held")
	require.NoError(t, w.stream.CloseSend())
	require.Eventually(t, func() bool {
		evs, err := st.ListRunEvents(t.Context(), store.DefaultTenant, runID(t, a), 0, 100)
		require.NoError(t, err)
		return len(evs) > 0 && evs[len(evs)-1].Data["step"] == "y"
	}, 10*time.Second, 10*time.Millisecond)
	require.Less(t, time.Since(began), hold, "written when the session ended, not after the hold")
}

func runID(t *testing.T, a *schedulerv1.Assignment) uuid.UUID {
	t.Helper()
	id, err := uuid.Parse(strings.TrimPrefix(a.GetRun(), "runs/"))
	require.NoError(t, err)
	return id
}
