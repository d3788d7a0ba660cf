package metrics

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/services/autoscaler/internal/policy"
)

func testPolicy() policy.Config {
	return policy.Config{
		Pools: []policy.PoolConfig{
			{Name: "cpu", SlotType: "cpu"},
			{Name: "gpu-a", SlotType: "gpu"},
			{Name: "gpu-b", SlotType: "gpu"},
			{Name: "empty", SlotType: "cpu"},
		},
		Gateway: &policy.GatewayConfig{Name: "gateway"},
	}
}

var cluster = Cluster{
	QueueDepth: map[string]int{"cpu": 7, "gpu": 2},
	Pools: map[string]PoolInventory{
		"cpu":   {Workers: 3, Ready: 2, Draining: 1, Slots: map[string]Slots{"cpu": {Total: 8, Used: 5}}},
		"gpu-a": {Workers: 1, Ready: 1, Slots: map[string]Slots{"gpu": {Total: 2, Used: 2}, "cpu": {Total: 4, Used: 1}}},
	},
}

func TestFromClusterMapsPoolsBySlotType(t *testing.T) {
	t.Parallel()
	snap := FromCluster(testPolicy(), cluster)
	require.Equal(t, map[string]policy.PoolMetrics{
		"cpu":   {QueueDepth: 7, SlotsTotal: 8, SlotsUsed: 5, Workers: 3, Ready: 2, Draining: 1},
		"gpu-a": {QueueDepth: 2, SlotsTotal: 2, SlotsUsed: 2, Workers: 1, Ready: 1},
		"gpu-b": {QueueDepth: 2},
		"empty": {QueueDepth: 7},
	}, snap.Pools)
	require.Nil(t, snap.Gateway)
}

type stats struct {
	c   Cluster
	err error
}

func (s stats) ClusterStats(context.Context) (Cluster, error) { return s.c, s.err }

type latency struct {
	p95 time.Duration
	ok  bool
	err error
}

func (l latency) GatewayP95(context.Context) (time.Duration, bool, error) { return l.p95, l.ok, l.err }

func TestSourceCombinesClusterAndGateway(t *testing.T) {
	t.Parallel()
	src := &Source{Cluster: stats{c: cluster}, Gateway: latency{p95: 420 * time.Millisecond, ok: true}, Policy: testPolicy()}
	snap, err := src.Snapshot(t.Context())
	require.NoError(t, err)
	require.Equal(t, 7, snap.Pools["cpu"].QueueDepth)
	require.Equal(t, &policy.GatewayMetrics{P95: 420 * time.Millisecond}, snap.Gateway)

	// An empty window reads as zero latency; a failing gateway source as no data.
	src.Gateway = latency{}
	snap, err = src.Snapshot(t.Context())
	require.NoError(t, err)
	require.Equal(t, &policy.GatewayMetrics{}, snap.Gateway)
	src.Gateway = latency{err: errors.New("gateway down")}
	snap, err = src.Snapshot(t.Context())
	require.NoError(t, err)
	require.Nil(t, snap.Gateway)
	require.Len(t, snap.Pools, 4, "the pools still have data")

	src.Cluster = stats{err: errors.New("scheduler unavailable")}
	_, err = src.Snapshot(t.Context())
	require.ErrorContains(t, err, "cluster statistics: scheduler unavailable")
}

func TestHTTPSource(t *testing.T) {
	t.Parallel()
	body := `{"queue_depth": {"cpu": 12},
	  "pools": {"cpu": {"workers": 3, "ready": 3, "draining": 0, "slots": {"cpu": {"total": 12, "used": 9}}}},
	  "gateway": {"p95_ms": 120.5, "requests": 10},
	  "future_field": true}`
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/stats", r.URL.Path)
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	src := &HTTPSource{URL: srv.URL + "/stats", Policy: testPolicy()}
	snap, err := src.Snapshot(t.Context())
	require.NoError(t, err)
	require.Equal(t, policy.PoolMetrics{QueueDepth: 12, SlotsTotal: 12, SlotsUsed: 9, Workers: 3, Ready: 3}, snap.Pools["cpu"])
	require.Equal(t, policy.PoolMetrics{}, snap.Pools["gpu-a"])
	require.Equal(t, &policy.GatewayMetrics{P95: 120500 * time.Microsecond}, snap.Gateway)

	body = `{"pools": {"cpu": {"slots": {"cpu": {"total": 2, "used": 3}}}}}`
	_, err = src.Snapshot(t.Context())
	require.ErrorContains(t, err, "pools.cpu.slots.cpu: want 0 <= used <= total (got used 3, total 2)")

	body = `{"queue_depth": {"cpu": 1}, "gateway": {"p95_ms": 900, "requests": 0}}`
	snap, err = src.Snapshot(t.Context())
	require.NoError(t, err)
	require.Equal(t, &policy.GatewayMetrics{}, snap.Gateway, "no request in the window")

	body = `not json`
	_, err = src.Snapshot(t.Context())
	require.ErrorContains(t, err, "invalid character")

	status, body = http.StatusServiceUnavailable, "starting"
	_, err = src.Snapshot(t.Context())
	require.ErrorContains(t, err, "503 Service Unavailable: starting")
}
