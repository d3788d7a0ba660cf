package api

import (
	"context"
	"log/slog"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/store"
)

// Threads implements agentserverv1.ThreadServiceServer.
type Threads struct {
	agentserverv1.UnimplementedThreadServiceServer
	Store *store.Store
	Log   *slog.Logger
}

// CreateThread creates a thread with an optional initial state.
func (s *Threads) CreateThread(ctx context.Context, req *agentserverv1.CreateThreadRequest) (*agentserverv1.Thread, error) {
	id := "t-" + strings.ReplaceAll(uuid.NewString(), "-", "")[:16]
	t, err := s.Store.CreateThread(ctx, tenant(ctx), id, req.GetThread().GetMetadata().AsMap(), req.GetState().AsMap())
	if err != nil {
		return nil, err
	}
	return threadToProto(t), nil
}

// GetThread returns a thread.
func (s *Threads) GetThread(ctx context.Context, req *agentserverv1.GetThreadRequest) (*agentserverv1.Thread, error) {
	id, err := parseThreadName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	t, err := s.Store.GetThread(ctx, tenant(ctx), id)
	if err != nil {
		return nil, notFound(err, "thread", req.GetName())
	}
	return threadToProto(t), nil
}

// ListThreads lists threads, newest first.
func (s *Threads) ListThreads(ctx context.Context, req *agentserverv1.ListThreadsRequest) (*agentserverv1.ListThreadsResponse, error) {
	n, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	var after *store.ThreadCursor
	if req.GetPageToken() != "" {
		after = new(store.ThreadCursor)
		if err := decodeToken(req.GetPageToken(), after); err != nil {
			return nil, err
		}
	}
	list, err := s.Store.ListThreads(ctx, tenant(ctx), n+1, after)
	if err != nil {
		return nil, err
	}
	resp := &agentserverv1.ListThreadsResponse{}
	if len(list) > n {
		list = list[:n]
		last := list[n-1]
		resp.NextPageToken = encodeToken(store.ThreadCursor{CreateTime: last.CreateTime, ID: last.ID})
	}
	for _, t := range list {
		resp.Threads = append(resp.Threads, threadToProto(t))
	}
	return resp, nil
}

// DeleteThread deletes a thread that has no active run.
func (s *Threads) DeleteThread(ctx context.Context, req *agentserverv1.DeleteThreadRequest) (*emptypb.Empty, error) {
	id, err := parseThreadName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	if err := s.Store.DeleteThread(ctx, tenant(ctx), id); err != nil {
		return nil, notFound(err, "thread", req.GetName())
	}
	return &emptypb.Empty{}, nil
}

// GetThreadState returns the state a thread holds.
func (s *Threads) GetThreadState(ctx context.Context, req *agentserverv1.GetThreadStateRequest) (*agentserverv1.ThreadState, error) {
	id, err := parseThreadName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	t, err := s.Store.GetThread(ctx, tenant(ctx), id)
	if err != nil {
		return nil, notFound(err, "thread", req.GetName())
	}
	out := &agentserverv1.ThreadState{Thread: "threads/" + t.ID, Values: toStruct(t.State)}
	if t.StateRunID != nil {
		out.Run = "runs/" + t.StateRunID.String()
	}
	if t.StateTime != nil {
		out.UpdateTime = timestamppb.New(*t.StateTime)
	} else {
		out.UpdateTime = timestamppb.New(t.CreateTime)
	}
	return out, nil
}
