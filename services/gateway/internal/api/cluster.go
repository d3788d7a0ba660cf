package api

import (
	"context"
	"log/slog"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/store"
)

// Cluster implements agentserverv1.ClusterServiceServer.
type Cluster struct {
	agentserverv1.UnimplementedClusterServiceServer
	Store *store.Store
	Log   *slog.Logger
}

// ListWorkers lists the workers and their inventory.
func (s *Cluster) ListWorkers(ctx context.Context, req *agentserverv1.ListWorkersRequest) (*agentserverv1.ListWorkersResponse, error) {
	n, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	var after string
	if req.GetPageToken() != "" {
		if err := decodeToken(req.GetPageToken(), &after); err != nil {
			return nil, err
		}
	}
	list, err := s.Store.ListWorkers(ctx, req.GetShowLost(), n+1, after)
	if err != nil {
		return nil, err
	}
	resp := &agentserverv1.ListWorkersResponse{}
	if len(list) > n {
		list = list[:n]
		resp.NextPageToken = encodeToken(list[n-1].ID)
	}
	for _, w := range list {
		resp.Workers = append(resp.Workers, workerToProto(w))
	}
	return resp, nil
}
