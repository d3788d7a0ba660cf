package scheduler_test

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/pkg/store"
	"github.com/agentserver/agentserver/services/scheduler/scheduler"
)

// startRuns starts a scheduler, creates n runs and connects a stand-in worker that
// registers with features; it returns the n assignments.
func startRuns(t *testing.T, n int, features ...string) (*store.Store, *standInWorker, []*schedulerv1.Assignment) {
	t.Helper()
	st, addr := startScheduler(t)
	ctx := t.Context()
	_, err := st.CreateAssistant(ctx, &store.Assistant{TenantID: store.DefaultTenant, ID: "a", SlotType: "cpu", Flow: flow})
	require.NoError(t, err)
	_, err = st.CreateRuns(ctx, store.DefaultTenant, slices.Repeat([]store.NewRun{{AssistantID: "a"}}, n),
		store.RunDefaults{MaxAttempts: 1, Timeout: time.Hour, MaxTimeout: time.Hour})
	require.NoError(t, err)
	w := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "w", Pool: "cpu", Slots: slots("cpu", n), Features: features})
	require.Eventually(t, func() bool { return len(w.assignments()) == n }, 20*time.Second, 10*time.Millisecond)
	return st, w, w.assignments()
}

func stepStartedEvent(run string, epoch int64, step string) *schedulerv1.RunEvent {
	return &schedulerv1.RunEvent{Run: run, Epoch: epoch, Type: "step_started",
		Data: &structpb.Struct{Fields: map[string]*structpb.Value{"step": structpb.NewStringValue(step)}}}
}

// A worker naming the protocol extensions gets back those the scheduler knows. Its results
// may carry their events, written before the result in the result's transaction, and
// the results of a batch are acknowledged by one ResultAcks.
func TestProtocolExtensions(t *testing.T) {
	t.Parallel()
	st, w, as := startRuns(t, 3, scheduler.FeatureResultAcks, "teleport", scheduler.FeatureResultEvents, scheduler.FeatureResultAcks)
	require.Equal(t, []string{scheduler.FeatureResultAcks, scheduler.FeatureResultEvents}, w.registered.GetFeatures(),
		"known extensions, once each, in the worker's order")
	for i, a := range as {
		ev := stepStartedEvent(a.GetRun(), a.GetEpoch(), "x")
		if i == 0 {
			ev.Run, ev.Epoch = "", 0 // left empty: the result's
		}
		require.NoError(t, w.stream.Send(&schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Result{Result: &schedulerv1.RunResult{
			Run: a.GetRun(), Epoch: a.GetEpoch(), Outcome: schedulerv1.RunResult_OUTCOME_SUCCEEDED, State: a.GetState(),
			Events: []*schedulerv1.RunEvent{ev},
		}}}))
	}
	var want []string
	for _, a := range as {
		want = append(want, a.GetRun())
	}
	require.Eventually(t, func() bool { runs, _ := w.acked(); return len(runs) == 3 }, 10*time.Second, 10*time.Millisecond)
	runs, messages := w.acked()
	require.ElementsMatch(t, want, runs)
	require.Zero(t, messages["single"], "no ResultAck to a worker that takes ResultAcks")
	require.Positive(t, messages["batched"])
	for _, a := range as {
		evs := workerEvents(t, st, a)
		started, ended := evs["step_started"], evs["state:SUCCEEDED"]
		require.Equal(t, map[string]any{"step": "x"}, started.Data, a.GetRun())
		require.Less(t, started.Seq, ended.Seq)
		require.True(t, started.CreateTime.Equal(ended.CreateTime), "one transaction")
	}
}

// A worker that names no extension (an older one) gets none, and a ResultAck per result.
func TestNoProtocolExtensionsForAnOlderWorker(t *testing.T) {
	t.Parallel()
	_, w, as := startRuns(t, 2)
	require.Empty(t, w.registered.GetFeatures())
	for _, a := range as {
		w.succeed(t, a)
	}
	require.Eventually(t, func() bool { runs, _ := w.acked(); return len(runs) == 2 }, 10*time.Second, 10*time.Millisecond)
	_, messages := w.acked()
	require.Equal(t, map[string]int{"single": 2}, messages)
}

// An event in a result must be of the result's claim: another run's ends the session with
// InvalidArgument, and nothing of the result is written.
func TestResultEventsOfAnotherClaimAreRefused(t *testing.T) {
	t.Parallel()
	st, w, as := startRuns(t, 2, scheduler.FeatureResultEvents)
	require.NoError(t, w.stream.Send(&schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Result{Result: &schedulerv1.RunResult{
		Run: as[0].GetRun(), Epoch: as[0].GetEpoch(), Outcome: schedulerv1.RunResult_OUTCOME_SUCCEEDED,
		Events: []*schedulerv1.RunEvent{stepStartedEvent(as[1].GetRun(), as[1].GetEpoch(), "x")},
	}}}))
	require.Eventually(t, func() bool { return w.ended() != nil }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, codes.InvalidArgument, status.Code(w.ended()))
	require.ErrorContains(t, w.ended(), "result.events[0]")
	run, err := st.GetRun(t.Context(), store.DefaultTenant, runID(t, as[0]))
	require.NoError(t, err)
	require.Equal(t, store.StateRunning, run.State)
	require.Empty(t, workerEvents(t, st, as[0]))
}

// A result sent twice (a worker resends what was not acknowledged) has its events written
// once: by the first copy, in one batch or the next (where the second copy is stale).
func TestResultEventsOfAResultSentTwiceAreWrittenOnce(t *testing.T) {
	t.Parallel()
	st, w, as := startRuns(t, 1, scheduler.FeatureResultAcks, scheduler.FeatureResultEvents)
	a := as[0]
	res := &schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Result{Result: &schedulerv1.RunResult{
		Run: a.GetRun(), Epoch: a.GetEpoch(), Outcome: schedulerv1.RunResult_OUTCOME_SUCCEEDED, State: a.GetState(),
		Events: []*schedulerv1.RunEvent{stepStartedEvent(a.GetRun(), a.GetEpoch(), "x")},
	}}}
	require.NoError(t, w.stream.Send(res))
	require.NoError(t, w.stream.Send(res))
	require.Eventually(t, func() bool { runs, _ := w.acked(); return len(runs) == 2 }, 10*time.Second, 10*time.Millisecond)
	evs, err := st.ListRunEvents(t.Context(), store.DefaultTenant, runID(t, a), 0, 100)
	require.NoError(t, err)
	started := 0
	for _, e := range evs {
		if e.Type == "step_started" {
			started++
		}
	}
	require.Equal(t, 1, started)
}
