package scheduler

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

// GetClusterStats reports queue depth per slot type and slot use per pool, cluster-wide.
func (s *Server) GetClusterStats(ctx context.Context, _ *schedulerv1.GetClusterStatsRequest) (*schedulerv1.GetClusterStatsResponse, error) {
	types, pools, err := s.store.ClusterStats(ctx)
	if err != nil {
		s.log.Error("reading cluster stats", "err", err)
		return nil, status.Error(codes.Unavailable, "reading cluster statistics failed; retry")
	}
	out := &schedulerv1.GetClusterStatsResponse{Time: timestamppb.Now()}
	for _, t := range types {
		out.SlotTypes = append(out.SlotTypes, &schedulerv1.SlotTypeStats{SlotType: t.SlotType, Queued: t.Queued, Delayed: t.Delayed, Running: t.Running})
	}
	for _, p := range pools {
		ps := &schedulerv1.PoolStats{Pool: p.Pool, WorkersReady: p.WorkersReady, WorkersDraining: p.WorkersDraining}
		for _, sc := range p.Slots {
			ps.Slots = append(ps.Slots, &agentserverv1.SlotInventory{Type: sc.Type, Total: sc.Total, Used: sc.Used})
		}
		out.Pools = append(out.Pools, ps)
	}
	return out, nil
}
