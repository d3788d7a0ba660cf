package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"

	gatewayv1 "github.com/agentserver/agentserver/gen/agentserver/gateway/v1"
)

// InstanceGatewayStats reads the latency of every gateway instance a resolver lists now
// (e.g. every passing instance of a Consul service), so one name covering many gateways
// still yields each gateway's own p95, combined as GatewayStats does. Connections are
// kept per address and closed when the address leaves the list.
type InstanceGatewayStats struct {
	// Resolve returns the gateways' host:port addresses.
	Resolve func(ctx context.Context) ([]string, error)
	// Timeout bounds one call (0: DefaultRPCTimeout).
	Timeout time.Duration
	// Log reports gateways that do not answer (nil discards).
	Log *slog.Logger
	// Opts are added to the plain-text credentials of each connection.
	Opts []grpc.DialOption

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// GatewayP95 implements GatewayLatency over the instances listed now.
func (g *InstanceGatewayStats) GatewayP95(ctx context.Context) (time.Duration, bool, error) {
	addrs, err := g.Resolve(ctx)
	if err != nil {
		return 0, false, fmt.Errorf("listing gateways: %w", err)
	}
	if len(addrs) == 0 {
		return 0, false, nil
	}
	stats, err := g.statsFor(addrs)
	if err != nil {
		return 0, false, err
	}
	return stats.GatewayP95(ctx)
}

// statsFor returns a GatewayStats over addrs, dialling new addresses and closing gone ones.
func (g *InstanceGatewayStats) statsFor(addrs []string) (*GatewayStats, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conns == nil {
		g.conns = make(map[string]*grpc.ClientConn)
	}
	want := make(map[string]bool, len(addrs))
	stats := &GatewayStats{timeout: g.Timeout, log: g.Log}
	if stats.timeout <= 0 {
		stats.timeout = DefaultRPCTimeout
	}
	if stats.log == nil {
		stats.log = slog.New(slog.DiscardHandler)
	}
	for _, a := range addrs {
		want[a] = true
		c, ok := g.conns[a]
		if !ok {
			conns, err := dialAll("gateway", []string{a}, g.Opts)
			if err != nil {
				return nil, err
			}
			c = conns[0]
			g.conns[a] = c
		}
		stats.targets = append(stats.targets, a)
		stats.clients = append(stats.clients, gatewayv1.NewGatewayStatsServiceClient(c))
	}
	for a, c := range g.conns {
		if !want[a] {
			_ = c.Close()
			delete(g.conns, a)
		}
	}
	return stats, nil
}

// Close closes every connection.
func (g *InstanceGatewayStats) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	var conns []*grpc.ClientConn
	for _, c := range g.conns {
		conns = append(conns, c)
	}
	g.conns = nil
	return closeAll(conns)
}
