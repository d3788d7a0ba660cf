package api

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/store"
)

// Runs implements agentserverv1.RunServiceServer.
type Runs struct {
	agentserverv1.UnimplementedRunServiceServer
	Store  *store.Store
	Limits Limits
	Log    *slog.Logger

	batcher *createBatcher
	reader  *runReader
	events  *eventReader
}

const (
	maxBatch        = 1000
	maxRequestIDLen = 128
	defaultWait     = 30 * time.Second
)

// newRun validates one create request; field paths are prefixed with prefix.
func (s *Runs) newRun(prefix string, req *agentserverv1.CreateRunRequest) (store.NewRun, error) {
	r := req.GetRun()
	if r == nil {
		return store.NewRun{}, invalid(prefix+"run", "is required")
	}
	if r.GetAssistant() == "" {
		return store.NewRun{}, invalid(prefix+"run.assistant", "is required (assistants/{id})")
	}
	aid, err := parseAssistantName(prefix+"run.assistant", r.GetAssistant())
	if err != nil {
		return store.NewRun{}, err
	}
	var thread string
	if r.GetThread() != "" {
		if thread, err = parseThreadName(prefix+"run.thread", r.GetThread()); err != nil {
			return store.NewRun{}, err
		}
	}
	multitask := store.Multitask(r.GetMultitask())
	switch multitask {
	case "":
		multitask = store.MultitaskReject
	case store.MultitaskReject, store.MultitaskEnqueue, store.MultitaskInterrupt:
	default:
		return store.NewRun{}, invalid(prefix+"run.multitask", "must be \"reject\", \"enqueue\" or \"interrupt\" (got %q)", r.GetMultitask())
	}
	var timeout time.Duration
	if t := r.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() < 0 {
			return store.NewRun{}, invalid(prefix+"run.timeout", "must be a non-negative duration")
		}
		timeout = t.AsDuration()
		if timeout > s.Limits.MaxTimeout {
			return store.NewRun{}, invalid(prefix+"run.timeout", "must be at most the cluster maximum of %s", s.Limits.MaxTimeout)
		}
	}
	if len(req.GetRequestId()) > maxRequestIDLen {
		return store.NewRun{}, invalid(prefix+"request_id", "must be at most %d bytes", maxRequestIDLen)
	}
	return store.NewRun{
		AssistantID: aid,
		Input:       r.GetInput().AsMap(),
		Priority:    r.Priority,
		Timeout:     timeout,
		RequestID:   req.GetRequestId(),
		ThreadID:    thread,
		Multitask:   multitask,
	}, nil
}

func (s *Runs) defaults() store.RunDefaults {
	return store.RunDefaults{MaxAttempts: s.Limits.DefaultMaxAttempts, Timeout: s.Limits.DefaultTimeout, MaxTimeout: s.Limits.MaxTimeout}
}

// CreateRun enqueues a run and returns it QUEUED.
func (s *Runs) CreateRun(ctx context.Context, req *agentserverv1.CreateRunRequest) (*agentserverv1.Run, error) {
	nr, err := s.newRun("", req)
	if err != nil {
		return nil, err
	}
	r, err := s.batcher.create(ctx, tenant(ctx), nr)
	if err != nil {
		return nil, err
	}
	return runToProto(r), nil
}

// NewRuns returns the run service. Concurrent CreateRun calls share transactions, and
// concurrent reads (GetRun and WaitRun; StreamRunEvents' polls) share statements, up to
// maxBatch runs each; call Close when done.
func NewRuns(st *store.Store, limits Limits, log *slog.Logger, maxBatch int) *Runs {
	s := &Runs{Store: st, Limits: limits, Log: log}
	s.batcher = newCreateBatcher(st, s.defaults(), maxBatch)
	s.reader = newRunReader(st, maxBatch)
	s.events = newEventReader(st, maxBatch)
	return s
}

// Close stops the create batcher and the readers.
func (s *Runs) Close() {
	s.batcher.close()
	s.reader.close()
	s.events.close()
}

// BatchCreateRuns enqueues up to 1000 runs, all or nothing.
func (s *Runs) BatchCreateRuns(ctx context.Context, req *agentserverv1.BatchCreateRunsRequest) (*agentserverv1.BatchCreateRunsResponse, error) {
	n := len(req.GetRequests())
	if n == 0 || n > maxBatch {
		return nil, invalid("requests", "must hold between 1 and %d requests (got %d)", maxBatch, n)
	}
	batch := make([]store.NewRun, n)
	for i, r := range req.GetRequests() {
		nr, err := s.newRun(fmt.Sprintf("requests[%d].", i), r)
		if err != nil {
			return nil, err
		}
		batch[i] = nr
	}
	runs, err := s.Store.CreateRuns(ctx, tenant(ctx), batch, s.defaults())
	if err != nil {
		return nil, err
	}
	resp := &agentserverv1.BatchCreateRunsResponse{Runs: make([]*agentserverv1.Run, n)}
	for i, r := range runs {
		resp.Runs[i] = runToProto(r)
	}
	return resp, nil
}

// GetRun returns a run.
func (s *Runs) GetRun(ctx context.Context, req *agentserverv1.GetRunRequest) (*agentserverv1.Run, error) {
	id, err := parseRunName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	r, err := s.reader.get(ctx, tenant(ctx), id)
	if err != nil {
		return nil, notFound(err, "run", req.GetName())
	}
	return runToProto(r), nil
}

// ListRuns lists runs, newest first, filtered by state and assistant.
func (s *Runs) ListRuns(ctx context.Context, req *agentserverv1.ListRunsRequest) (*agentserverv1.ListRunsResponse, error) {
	n, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	if _, ok := agentserverv1.Run_State_name[int32(req.GetState())]; !ok {
		return nil, invalid("state", "%d is not a run state", req.GetState())
	}
	f := store.RunFilter{State: runState(req.GetState())}
	if req.GetAssistant() != "" {
		if f.AssistantID, err = parseAssistantName("assistant", req.GetAssistant()); err != nil {
			return nil, err
		}
	}
	var after *store.RunCursor
	if req.GetPageToken() != "" {
		after = new(store.RunCursor)
		if err := decodeToken(req.GetPageToken(), after); err != nil {
			return nil, err
		}
	}
	list, err := s.Store.ListRuns(ctx, tenant(ctx), f, n+1, after)
	if err != nil {
		return nil, err
	}
	resp := &agentserverv1.ListRunsResponse{}
	if len(list) > n {
		list = list[:n]
		last := list[n-1]
		resp.NextPageToken = encodeToken(store.RunCursor{CreateTime: last.CreateTime, ID: last.ID})
	}
	for _, r := range list {
		resp.Runs = append(resp.Runs, runToProto(r))
	}
	return resp, nil
}

// CancelRun cancels a run; idempotent.
func (s *Runs) CancelRun(ctx context.Context, req *agentserverv1.CancelRunRequest) (*agentserverv1.Run, error) {
	id, err := parseRunName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	r, err := s.Store.CancelRun(ctx, tenant(ctx), id)
	if err != nil {
		return nil, notFound(err, "run", req.GetName())
	}
	return runToProto(r), nil
}

// settled reports whether WaitRun may return: the run is terminal or waits for input.
func settled(st store.RunState) bool { return st.Terminal() || st == store.StateInterrupted }

// WaitRun returns once the run is terminal or interrupted, or when the timeout passes
// (then with the run as it is). It polls with a backoff capped at waitPollMax, at the
// multiples of its current delay on the clock: waiters polling at the same delay poll
// at the same instants, and the run reader makes their reads one statement.
func (s *Runs) WaitRun(ctx context.Context, req *agentserverv1.WaitRunRequest) (*agentserverv1.Run, error) {
	id, err := parseRunName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	wait := defaultWait
	if t := req.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() < 0 {
			return nil, invalid("timeout", "must be a non-negative duration")
		}
		wait = min(t.AsDuration(), s.Limits.MaxWait)
	}
	deadline := time.Now().Add(wait)
	delay := waitPollMin
	for {
		r, err := s.reader.get(ctx, tenant(ctx), id)
		if err != nil {
			return nil, notFound(err, "run", req.GetName())
		}
		left := time.Until(deadline)
		if settled(r.State) || left <= 0 {
			return runToProto(r), nil
		}
		t := time.NewTimer(min(nextPoll(time.Now(), delay), left))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		delay = min(delay*2, waitPollMax)
	}
}

// WaitRun's polling delays: the first, doubled at every poll up to the last.
const (
	waitPollMin = 5 * time.Millisecond
	waitPollMax = 50 * time.Millisecond
)

// nextPoll is how long after now a waiter at delay polls next: at the next multiple of
// delay on the clock (within delay of now, never at once).
func nextPoll(now time.Time, delay time.Duration) time.Duration {
	return now.Truncate(delay).Add(delay).Sub(now)
}

// ResumeRun continues an INTERRUPTED run with the answer to its prompt.
func (s *Runs) ResumeRun(ctx context.Context, req *agentserverv1.ResumeRunRequest) (*agentserverv1.Run, error) {
	id, err := parseRunName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	r, err := s.Store.ResumeRun(ctx, tenant(ctx), id, req.GetValue().AsInterface())
	if err != nil {
		return nil, notFound(err, "run", req.GetName())
	}
	return runToProto(r), nil
}

const (
	defaultEventPage = 100
	eventPoll        = 50 * time.Millisecond
)

func eventToProto(run string, e store.RunEvent) *agentserverv1.RunEvent {
	return &agentserverv1.RunEvent{Seq: e.Seq, Run: run, Type: e.Type, Data: toStruct(e.Data), CreateTime: timestamppb.New(e.CreateTime)}
}

// ListRunEvents returns a page of a run's event log.
func (s *Runs) ListRunEvents(ctx context.Context, req *agentserverv1.ListRunEventsRequest) (*agentserverv1.ListRunEventsResponse, error) {
	id, err := parseRunName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	n := defaultEventPage
	if req.GetPageSize() != 0 {
		if n, err = pageSize(req.GetPageSize()); err != nil {
			return nil, err
		}
	}
	var after int64
	if req.GetPageToken() != "" {
		if err := decodeToken(req.GetPageToken(), &after); err != nil {
			return nil, err
		}
	}
	if _, err := s.Store.GetRun(ctx, tenant(ctx), id); err != nil {
		return nil, notFound(err, "run", req.GetName())
	}
	events, err := s.Store.ListRunEvents(ctx, tenant(ctx), id, after, n)
	if err != nil {
		return nil, err
	}
	resp := &agentserverv1.ListRunEventsResponse{}
	for _, e := range events {
		resp.Events = append(resp.Events, eventToProto(req.GetName(), e))
	}
	if len(events) == n {
		resp.NextPageToken = encodeToken(events[n-1].Seq)
	}
	return resp, nil
}

// terminalEvent reports whether e records the run's end.
func terminalEvent(e store.RunEvent) bool {
	if e.Type != "state" {
		return false
	}
	switch e.Data["state"] {
	case "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT":
		return true
	}
	return false
}

// StreamRunEvents sends the run's events after after_seq, history first, then live (by
// polling the durable log every eventPoll, at its multiples on the clock: the polls of
// concurrent streams are made at the same instants and share statements), and returns
// after the terminal event.
func (s *Runs) StreamRunEvents(req *agentserverv1.StreamRunEventsRequest, stream agentserverv1.RunService_StreamRunEventsServer) error {
	ctx := stream.Context()
	id, err := parseRunName("name", req.GetName())
	if err != nil {
		return err
	}
	if req.GetAfterSeq() < 0 {
		return invalid("after_seq", "must not be negative")
	}
	if _, err := s.reader.get(ctx, tenant(ctx), id); err != nil {
		return notFound(err, "run", req.GetName())
	}
	after := req.GetAfterSeq()
	for {
		events, err := s.events.after(ctx, tenant(ctx), id, after)
		if err != nil {
			return err
		}
		for _, e := range events {
			if err := stream.Send(eventToProto(req.GetName(), e)); err != nil {
				return err
			}
			after = e.Seq
			if terminalEvent(e) {
				return nil
			}
		}
		if len(events) == streamPage {
			continue
		}
		t := time.NewTimer(nextPoll(time.Now(), eventPoll))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}
