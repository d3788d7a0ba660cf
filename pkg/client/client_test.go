package client_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/client"
)

// fakeGateway answers GetRun with its header set, and fails CreateRun with UNAVAILABLE,
// counting the attempts.
type fakeGateway struct {
	agentserverv1.UnimplementedRunServiceServer
	id      string
	addr    string
	srv     *grpc.Server
	creates atomic.Int32
}

func (g *fakeGateway) GetRun(ctx context.Context, req *agentserverv1.GetRunRequest) (*agentserverv1.Run, error) {
	_ = grpc.SetHeader(ctx, metadata.Pairs(client.GatewayHeader, g.id))
	return &agentserverv1.Run{Name: req.GetName()}, nil
}

func (g *fakeGateway) CreateRun(context.Context, *agentserverv1.CreateRunRequest) (*agentserverv1.Run, error) {
	g.creates.Add(1)
	return nil, status.Error(codes.Unavailable, "going away")
}

func startFakes(t *testing.T, n int) []*fakeGateway {
	t.Helper()
	gws := make([]*fakeGateway, n)
	for i := range gws {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		g := &fakeGateway{id: fmt.Sprintf("gw-%d", i), addr: l.Addr().String(), srv: grpc.NewServer()}
		agentserverv1.RegisterRunServiceServer(g.srv, g)
		go func() { _ = g.srv.Serve(l) }()
		t.Cleanup(g.srv.Stop)
		gws[i] = g
	}
	return gws
}

func staticTarget(gws []*fakeGateway) string {
	t := "static:///"
	for i, g := range gws {
		if i > 0 {
			t += ","
		}
		t += g.addr
	}
	return t
}

// answeredBy returns the gateway that answered GetRun for key.
func answeredBy(t *testing.T, c *client.Client, key string) string {
	t.Helper()
	var md metadata.MD
	_, err := c.Runs.GetRun(client.WithKey(t.Context(), key), &agentserverv1.GetRunRequest{Name: "runs/" + key}, grpc.Header(&md))
	require.NoError(t, err, "key %s", key)
	require.Len(t, md.Get(client.GatewayHeader), 1)
	return md.Get(client.GatewayHeader)[0]
}

func TestConsistentHashStableAndRemapsOnlyTheLostShare(t *testing.T) {
	t.Parallel()
	gws := startFakes(t, 3)
	c, err := client.New(staticTarget(gws), client.WithConsistentHash())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })

	const keys = 300
	pass := func() (map[string]string, map[string]int) {
		owner := make(map[string]string, keys)
		perGateway := make(map[string]int)
		for i := range keys {
			k := fmt.Sprintf("thread-%d", i)
			owner[k] = answeredBy(t, c, k)
			perGateway[owner[k]]++
		}
		return owner, perGateway
	}
	// Until every connection is READY, a key whose owner is still connecting goes to
	// the next gateway on the ring: the set is stable once two passes agree and every
	// gateway owns a share.
	owner, perGateway := pass()
	deadline := time.Now().Add(30 * time.Second)
	for {
		next, per := pass()
		if len(per) == 3 && maps.Equal(owner, next) {
			break
		}
		require.True(t, time.Now().Before(deadline), "no stable mapping over three gateways: %v", per)
		owner, perGateway = next, per
	}
	for range 3 {
		for k, o := range owner {
			require.Equal(t, o, answeredBy(t, c, k), "key %s moved while the set was stable", k)
		}
	}

	// gw-1 goes away: its keys move (every call still succeeds), the others' stay.
	gws[1].srv.Stop()
	moved := 0
	for k, o := range owner {
		now := answeredBy(t, c, k)
		if o == "gw-1" {
			require.NotEqual(t, "gw-1", now)
			moved++
			continue
		}
		require.Equal(t, o, now, "key %s of a remaining gateway moved", k)
	}
	require.Equal(t, perGateway["gw-1"], moved)
}

func TestRetriesOnlyWhatIsSafeToRepeat(t *testing.T) {
	t.Parallel()
	gws := startFakes(t, 1)
	policy := client.DefaultRetryPolicy()
	policy.InitialBackoff = time.Millisecond
	c, err := client.New(gws[0].addr, client.WithRetry(policy))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })

	_, err = c.Runs.CreateRun(t.Context(), &agentserverv1.CreateRunRequest{Run: &agentserverv1.Run{Assistant: "assistants/a"}})
	require.Equal(t, codes.Unavailable, status.Code(err))
	require.EqualValues(t, 1, gws[0].creates.Swap(0), "a create without request_id is sent once")

	_, err = c.Runs.CreateRun(t.Context(), &agentserverv1.CreateRunRequest{Run: &agentserverv1.Run{Assistant: "assistants/a"}, RequestId: "r1"})
	require.Equal(t, codes.Unavailable, status.Code(err))
	require.EqualValues(t, policy.MaxAttempts, gws[0].creates.Load(), "a create with request_id is retried")
}

func TestRetryable(t *testing.T) {
	t.Parallel()
	withID := &agentserverv1.CreateRunRequest{RequestId: "x"}
	without := &agentserverv1.CreateRunRequest{}
	for _, tc := range []struct {
		method string
		req    any
		want   bool
	}{
		{agentserverv1.RunService_GetRun_FullMethodName, &agentserverv1.GetRunRequest{}, true},
		{agentserverv1.RunService_WaitRun_FullMethodName, &agentserverv1.WaitRunRequest{}, true},
		{agentserverv1.RunService_CancelRun_FullMethodName, &agentserverv1.CancelRunRequest{}, true},
		{agentserverv1.RunService_CreateRun_FullMethodName, withID, true},
		{agentserverv1.RunService_CreateRun_FullMethodName, without, false},
		{agentserverv1.RunService_BatchCreateRuns_FullMethodName, &agentserverv1.BatchCreateRunsRequest{Requests: []*agentserverv1.CreateRunRequest{withID, withID}}, true},
		{agentserverv1.RunService_BatchCreateRuns_FullMethodName, &agentserverv1.BatchCreateRunsRequest{Requests: []*agentserverv1.CreateRunRequest{withID, without}}, false},
		{agentserverv1.RunService_ResumeRun_FullMethodName, &agentserverv1.ResumeRunRequest{}, false},
		{agentserverv1.AssistantService_UpdateAssistant_FullMethodName, &agentserverv1.UpdateAssistantRequest{}, false},
		{agentserverv1.AssistantService_DeleteAssistant_FullMethodName, &agentserverv1.DeleteAssistantRequest{}, false},
	} {
		require.Equal(t, tc.want, client.Retryable(tc.method, tc.req), "%s %T", tc.method, tc.req)
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	t.Parallel()
	_, err := client.New("")
	require.Error(t, err)
	_, err = client.New("localhost:1", client.WithRetry(client.RetryPolicy{}))
	require.ErrorContains(t, err, "MaxAttempts")
}
