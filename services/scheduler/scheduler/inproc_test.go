package scheduler_test

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/pkg/store"
)

// A worker in the scheduler's process (the all-in-one) holds its session over
// InProcess: it is assigned runs and its results are recorded as over the network, and
// once the scheduler shuts down it can no longer open one.
func TestInProcessSessions(t *testing.T) {
	st, srv, stop := runScheduler(t)
	ctx := t.Context()
	_, err := st.CreateAssistant(ctx, &store.Assistant{TenantID: store.DefaultTenant, ID: "a", SlotType: "cpu", Flow: flow})
	require.NoError(t, err)
	created, err := st.CreateRuns(ctx, store.DefaultTenant, []store.NewRun{{AssistantID: "a"}, {AssistantID: "a"}},
		store.RunDefaults{MaxAttempts: 1, Timeout: time.Hour, MaxTimeout: time.Hour})
	require.NoError(t, err)

	w := connectStandInOver(t, srv.InProcess(), &schedulerv1.Register{WorkerId: "inproc", Pool: "cpu", Slots: slots("cpu", 4)})
	require.Eventually(t, func() bool { return len(w.assignments()) == 2 }, 20*time.Second, 20*time.Millisecond)
	for _, a := range w.assignments() {
		w.succeed(t, a)
	}
	require.Eventually(t, func() bool {
		for _, r := range created {
			got, err := st.GetRun(ctx, store.DefaultTenant, r.ID)
			if err != nil || got.State != store.StateSucceeded {
				return false
			}
		}
		return true
	}, 20*time.Second, 20*time.Millisecond, "both results recorded")

	stop()
	stream, err := schedulerv1.NewSchedulerServiceClient(srv.InProcess()).Connect(ctx)
	require.NoError(t, err)
	// The handler may have refused the session before the register arrives: the send then
	// answers io.EOF, as over gRPC, and Recv says why.
	if err := stream.Send(&schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Register{
		Register: &schedulerv1.Register{WorkerId: "late", Pool: "cpu", Slots: slots("cpu", 1)}}}); err != nil {
		require.ErrorIs(t, err, io.EOF)
	}
	_, err = stream.Recv()
	require.Equal(t, codes.Unavailable, status.Code(err), "a stopped scheduler takes no new session")
}
