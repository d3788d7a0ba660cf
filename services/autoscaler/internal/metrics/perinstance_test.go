package metrics

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Every instance the resolver lists is asked, so the slowest gateway behind one name
// decides; instances that leave the list are no longer asked.
func TestInstanceGatewayStatsAsksEveryInstance(t *testing.T) {
	t.Parallel()
	fast, fastAddr := serve(t)
	slow, slowAddr := serve(t)
	fast.latency.Store(latencyResp(100, 20*time.Millisecond))
	slow.latency.Store(latencyResp(5, 900*time.Millisecond))
	var mu sync.Mutex
	listed := []string{fastAddr, slowAddr}
	g := &InstanceGatewayStats{Resolve: func(context.Context) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), listed...), nil
	}}
	t.Cleanup(func() { require.NoError(t, g.Close()) })

	p95, ok, err := g.GatewayP95(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, 900*time.Millisecond, p95, "the slow gateway behind the same name counts")

	mu.Lock()
	listed = []string{fastAddr}
	mu.Unlock()
	before := slow.calls.Load()
	p95, ok, err = g.GatewayP95(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, 20*time.Millisecond, p95)
	require.Equal(t, before, slow.calls.Load(), "a gateway that left the list is not asked")
}
