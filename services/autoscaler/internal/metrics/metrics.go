// Package metrics owns how the autoscaler observes the cluster: it turns the scheduler's
// statistics (queue depth per slot type, workers and slots per pool) and the gateways'
// latency into the policy's Snapshot, per configured pool.
//
// The inputs are interfaces (ClusterStats, GatewayLatency) so that any transport can feed
// them: the scheduler's GetClusterStats RPC (SchedulerStats) and the gateways' GetLatency
// RPC (GatewayStats), or a JSON document over HTTP (HTTPSource). The package only reads;
// it must never change the cluster or decide anything.
package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/agentserver/agentserver/services/autoscaler/internal/policy"
)

// Cluster is the scheduler's view of queue and capacity.
type Cluster struct {
	// QueueDepth counts queued (not yet placed) runs by slot type.
	QueueDepth map[string]int
	// Pools holds the worker inventory by pool name; a pool with no worker may be absent.
	Pools map[string]PoolInventory
}

// PoolInventory counts one pool's workers and slots. Lost workers are not counted.
type PoolInventory struct {
	// Workers counts the pool's live workers in any state.
	Workers int
	// Ready counts the workers taking work.
	Ready int
	// Draining counts the workers finishing their runs before they stop.
	Draining int
	// Slots are the slots of the pool's ready workers, by slot type.
	Slots map[string]Slots
}

// Slots counts slots of one type.
type Slots struct {
	// Total configured.
	Total int
	// Used (busy).
	Used int
}

// ClusterStats reports the scheduler's statistics; SchedulerStats implements it over the
// scheduler's GetClusterStats RPC.
type ClusterStats interface {
	// ClusterStats returns the current statistics of the whole cluster.
	ClusterStats(ctx context.Context) (Cluster, error)
}

// GatewayLatency reports the gateways' request latency; GatewayStats implements it over
// every gateway's GetLatency RPC.
type GatewayLatency interface {
	// GatewayP95 returns the p95 of request latency over the gateways' sliding window,
	// all gateways together; ok is false when the window holds no request.
	GatewayP95(ctx context.Context) (p95 time.Duration, ok bool, err error)
}

// Source combines a ClusterStats and an optional GatewayLatency into snapshots for the
// controller (it implements controller.MetricsSource).
type Source struct {
	// Cluster provides queue depth and inventory; required.
	Cluster ClusterStats
	// Gateway provides gateway latency; nil when the gateways are not scaled.
	Gateway GatewayLatency
	// Policy says which pools to report and which slot type each one scales on.
	Policy policy.Config
	// Logger reports a failing gateway source; nil discards.
	Logger *slog.Logger
}

// Snapshot implements controller.MetricsSource. A failing cluster source fails the
// snapshot; a failing gateway source only leaves the gateways without data, so the
// worker pools still scale.
func (s *Source) Snapshot(ctx context.Context) (policy.Snapshot, error) {
	c, err := s.Cluster.ClusterStats(ctx)
	if err != nil {
		return policy.Snapshot{}, fmt.Errorf("cluster statistics: %w", err)
	}
	snap := FromCluster(s.Policy, c)
	if s.Gateway != nil && s.Policy.Gateway != nil {
		p95, ok, err := s.Gateway.GatewayP95(ctx)
		switch {
		case err != nil:
			if s.Logger != nil {
				s.Logger.Warn("gateway latency unavailable", "err", err)
			}
		case ok:
			snap.Gateway = &policy.GatewayMetrics{P95: p95}
		default:
			// No request in the window: latency is as good as it gets.
			snap.Gateway = &policy.GatewayMetrics{}
		}
	}
	return snap, nil
}

// FromCluster maps the scheduler's statistics onto the policy's pools: each pool gets
// the queue depth of its slot type and the slots of that type on its ready workers.
// Pools that share a slot type each see that type's whole queue. Replicas and Scaling
// are left for the controller to fill in.
func FromCluster(cfg policy.Config, c Cluster) policy.Snapshot {
	snap := policy.Snapshot{Pools: make(map[string]policy.PoolMetrics, len(cfg.Pools))}
	for _, p := range cfg.Pools {
		inv := c.Pools[p.Name]
		slots := inv.Slots[p.SlotType]
		snap.Pools[p.Name] = policy.PoolMetrics{
			QueueDepth: c.QueueDepth[p.SlotType],
			SlotsTotal: slots.Total,
			SlotsUsed:  slots.Used,
			Workers:    inv.Workers,
			Ready:      inv.Ready,
			Draining:   inv.Draining,
		}
	}
	return snap
}
