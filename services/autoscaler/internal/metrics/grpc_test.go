package metrics

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	gatewayv1 "github.com/agentserver/agentserver/gen/agentserver/gateway/v1"
	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/services/autoscaler/internal/policy"
)

// standIn is an in-process scheduler and gateway: it serves GetClusterStats and
// GetLatency with whatever the test sets, or an error.
type standIn struct {
	schedulerv1.UnimplementedSchedulerServiceServer
	gatewayv1.UnimplementedGatewayStatsServiceServer

	stats   atomic.Pointer[schedulerv1.GetClusterStatsResponse]
	latency atomic.Pointer[gatewayv1.GetLatencyResponse]
	fail    atomic.Bool
	calls   atomic.Int64
}

func (s *standIn) GetClusterStats(context.Context, *schedulerv1.GetClusterStatsRequest) (*schedulerv1.GetClusterStatsResponse, error) {
	s.calls.Add(1)
	if s.fail.Load() {
		return nil, status.Error(codes.Unavailable, "reading cluster statistics failed; retry")
	}
	return s.stats.Load(), nil
}

func (s *standIn) GetLatency(context.Context, *gatewayv1.GetLatencyRequest) (*gatewayv1.GetLatencyResponse, error) {
	s.calls.Add(1)
	if s.fail.Load() {
		return nil, status.Error(codes.Unavailable, "gateway overloaded")
	}
	return s.latency.Load(), nil
}

// serve starts a stand-in on a loopback port and returns it with its address.
func serve(t *testing.T) (*standIn, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	s := &standIn{}
	s.stats.Store(&schedulerv1.GetClusterStatsResponse{})
	s.latency.Store(&gatewayv1.GetLatencyResponse{})
	schedulerv1.RegisterSchedulerServiceServer(srv, s)
	gatewayv1.RegisterGatewayStatsServiceServer(srv, s)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return s, lis.Addr().String()
}

// deadAddr is a loopback address nobody listens on (any more).
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	return addr
}

func slots(typ string, total, used int32) *agentserverv1.SlotInventory {
	return &agentserverv1.SlotInventory{Type: typ, Total: total, Used: used}
}

func TestSplitTargets(t *testing.T) {
	t.Parallel()
	require.Equal(t, []string{"a:1", "consul:///scheduler", "dns:///b:2"}, SplitTargets(" a:1, consul:///scheduler,,dns:///b:2 "))
	require.Nil(t, SplitTargets(""))
}

func TestClusterFromProto(t *testing.T) {
	t.Parallel()
	resp := &schedulerv1.GetClusterStatsResponse{
		SlotTypes: []*schedulerv1.SlotTypeStats{
			{SlotType: "cpu", Queued: 37, Delayed: 5, Running: 9},
			{SlotType: "gpu", Queued: 0, Delayed: 2, Running: 1},
		},
		Pools: []*schedulerv1.PoolStats{
			{Pool: "cpu", WorkersReady: 3, Slots: []*agentserverv1.SlotInventory{slots("cpu", 12, 9)}},
			// One of four identical workers drains: 3/4 of the slots are the ready ones'.
			{Pool: "gpu", WorkersReady: 3, WorkersDraining: 1,
				Slots: []*agentserverv1.SlotInventory{slots("gpu", 4, 2), slots("cpu", 8, 1)}},
			// Only draining workers: no capacity to take work.
			{Pool: "leaving", WorkersDraining: 2, Slots: []*agentserverv1.SlotInventory{slots("cpu", 4, 4)}},
		},
	}
	c, err := ClusterFromProto(resp)
	require.NoError(t, err)
	require.Equal(t, Cluster{
		QueueDepth: map[string]int{"cpu": 37, "gpu": 0},
		Pools: map[string]PoolInventory{
			"cpu":     {Workers: 3, Ready: 3, Slots: map[string]Slots{"cpu": {Total: 12, Used: 9}}},
			"gpu":     {Workers: 4, Ready: 3, Draining: 1, Slots: map[string]Slots{"gpu": {Total: 3, Used: 2}, "cpu": {Total: 6, Used: 1}}},
			"leaving": {Workers: 2, Draining: 2, Slots: map[string]Slots{"cpu": {Total: 0, Used: 0}}},
		},
	}, c)

	// Through FromCluster, as the policy sees it.
	snap := FromCluster(policy.Config{Pools: []policy.PoolConfig{{Name: "cpu", SlotType: "cpu"}, {Name: "gpu", SlotType: "gpu"}}}, c)
	require.Equal(t, policy.PoolMetrics{QueueDepth: 37, SlotsTotal: 12, SlotsUsed: 9, Workers: 3, Ready: 3}, snap.Pools["cpu"])
	require.Equal(t, policy.PoolMetrics{QueueDepth: 0, SlotsTotal: 3, SlotsUsed: 2, Workers: 4, Ready: 3, Draining: 1}, snap.Pools["gpu"])

	// An empty cluster: no pool, no queue.
	c, err = ClusterFromProto(&schedulerv1.GetClusterStatsResponse{})
	require.NoError(t, err)
	require.Empty(t, c.QueueDepth)
	require.Empty(t, c.Pools)

	for name, bad := range map[string]*schedulerv1.GetClusterStatsResponse{
		`slot type "cpu": negative run count`: {SlotTypes: []*schedulerv1.SlotTypeStats{{SlotType: "cpu", Queued: -1}}},
		`pool "cpu": negative worker count`:   {Pools: []*schedulerv1.PoolStats{{Pool: "cpu", WorkersReady: -1}}},
		`pool "cpu" slot type "cpu": want 0 <= used <= total (got used 3, total 2)`: {Pools: []*schedulerv1.PoolStats{
			{Pool: "cpu", WorkersReady: 1, Slots: []*agentserverv1.SlotInventory{slots("cpu", 2, 3)}}}},
	} {
		_, err := ClusterFromProto(bad)
		require.EqualError(t, err, name)
	}
}

func TestSchedulerStatsFailsOver(t *testing.T) {
	t.Parallel()
	a, addrA := serve(t)
	b, addrB := serve(t)
	dead := deadAddr(t)
	for _, s := range []*standIn{a, b} {
		s.stats.Store(&schedulerv1.GetClusterStatsResponse{
			SlotTypes: []*schedulerv1.SlotTypeStats{{SlotType: "cpu", Queued: 4}},
			Pools:     []*schedulerv1.PoolStats{{Pool: "cpu", WorkersReady: 1, Slots: []*agentserverv1.SlotInventory{slots("cpu", 2, 2)}}},
		})
	}
	want := Cluster{
		QueueDepth: map[string]int{"cpu": 4},
		Pools:      map[string]PoolInventory{"cpu": {Workers: 1, Ready: 1, Slots: map[string]Slots{"cpu": {Total: 2, Used: 2}}}},
	}

	src, err := NewSchedulerStats([]string{dead, addrA, addrB}, 2*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, src.Close()) })

	// The dead one fails, the next answers.
	c, err := src.ClusterStats(t.Context())
	require.NoError(t, err)
	require.Equal(t, want, c)
	require.EqualValues(t, 1, a.calls.Load())

	// The one that answered is asked first from then on.
	_, err = src.ClusterStats(t.Context())
	require.NoError(t, err)
	require.EqualValues(t, 2, a.calls.Load())
	require.Zero(t, b.calls.Load())

	// It fails: the next one answers, and stays first.
	a.fail.Store(true)
	c, err = src.ClusterStats(t.Context())
	require.NoError(t, err)
	require.Equal(t, want, c)
	require.EqualValues(t, 1, b.calls.Load())
	a.fail.Store(false)
	_, err = src.ClusterStats(t.Context())
	require.NoError(t, err)
	require.EqualValues(t, 2, b.calls.Load())
	require.EqualValues(t, 3, a.calls.Load())

	// None answers: every failure is named.
	a.fail.Store(true)
	b.fail.Store(true)
	_, err = src.ClusterStats(t.Context())
	require.ErrorContains(t, err, "scheduler "+addrA+": rpc error: code = Unavailable desc = reading cluster statistics failed; retry")
	require.ErrorContains(t, err, "scheduler "+addrB+": rpc error: code = Unavailable")
	require.ErrorContains(t, err, "scheduler "+dead+": ")

	// Nonsense from a scheduler counts as a failure too.
	b.fail.Store(false)
	b.stats.Store(&schedulerv1.GetClusterStatsResponse{Pools: []*schedulerv1.PoolStats{{Pool: "cpu", WorkersReady: -3}}})
	_, err = src.ClusterStats(t.Context())
	require.ErrorContains(t, err, "scheduler "+addrB+`: pool "cpu": negative worker count`)

	_, err = NewSchedulerStats(nil, 0)
	require.EqualError(t, err, "scheduler: no address given")
}

func latencyResp(count int64, p95 time.Duration) *gatewayv1.GetLatencyResponse {
	return &gatewayv1.GetLatencyResponse{Window: durationpb.New(time.Minute), Count: count,
		P50: durationpb.New(p95 / 2), P95: durationpb.New(p95), P99: durationpb.New(2 * p95)}
}

func TestGatewayStatsTakesTheLargestP95(t *testing.T) {
	t.Parallel()
	g1, addr1 := serve(t)
	g2, addr2 := serve(t)
	g3, addr3 := serve(t)
	src, err := NewGatewayStats([]string{addr1, addr2, addr3}, 2*time.Second, nil)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, src.Close()) })

	// Every window empty: no data, latency reads as good.
	_, ok, err := src.GatewayP95(t.Context())
	require.NoError(t, err)
	require.False(t, ok)

	// The busiest gateway is fast, one is slow, one saw nothing (its p95 of 0 is no data).
	g1.latency.Store(latencyResp(5000, 40*time.Millisecond))
	g2.latency.Store(latencyResp(12, 900*time.Millisecond))
	g3.latency.Store(latencyResp(0, 0))
	p95, ok, err := src.GatewayP95(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, 900*time.Millisecond, p95)

	lat, err := src.Latencies(t.Context())
	require.NoError(t, err)
	require.Equal(t, []GatewayReading{
		{Target: addr1, Count: 5000, P95: 40 * time.Millisecond},
		{Target: addr2, Count: 12, P95: 900 * time.Millisecond},
		{Target: addr3, Count: 0, P95: 0},
	}, lat)

	// A gateway that does not answer is left out; the others still count.
	g2.fail.Store(true)
	p95, ok, err = src.GatewayP95(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, 40*time.Millisecond, p95)

	// None answers: an error, so the policy gets no gateway data.
	g1.fail.Store(true)
	g3.fail.Store(true)
	_, _, err = src.GatewayP95(t.Context())
	require.ErrorContains(t, err, "gateway "+addr2+": rpc error: code = Unavailable desc = gateway overloaded")
	require.ErrorContains(t, err, "gateway "+addr1+": ")
	require.ErrorContains(t, err, "gateway "+addr3+": ")
}

// The gRPC sources feed Source, as `autoscaler run` wires them.
func TestSourceOverGRPC(t *testing.T) {
	t.Parallel()
	s, addr := serve(t)
	s.stats.Store(&schedulerv1.GetClusterStatsResponse{
		SlotTypes: []*schedulerv1.SlotTypeStats{{SlotType: "cpu", Queued: 7}},
		Pools:     []*schedulerv1.PoolStats{{Pool: "cpu", WorkersReady: 2, Slots: []*agentserverv1.SlotInventory{slots("cpu", 8, 5)}}},
	})
	s.latency.Store(latencyResp(10, 250*time.Millisecond))
	cluster, err := NewSchedulerStats([]string{addr}, 0)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cluster.Close() })
	gw, err := NewGatewayStats([]string{addr}, 0, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = gw.Close() })

	src := &Source{Cluster: cluster, Gateway: gw, Policy: testPolicy()}
	snap, err := src.Snapshot(t.Context())
	require.NoError(t, err)
	require.Equal(t, policy.PoolMetrics{QueueDepth: 7, SlotsTotal: 8, SlotsUsed: 5, Workers: 2, Ready: 2}, snap.Pools["cpu"])
	require.Equal(t, &policy.GatewayMetrics{P95: 250 * time.Millisecond}, snap.Gateway)
}
