package cli

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

// fakeAPI is a test stand-in for the gateway: it serves the four public services on a
// loopback port, records every request with its metadata, and answers with what a test put in
// its fields (or a plain echo when a field is nil). It holds no state beyond that script.
type fakeAPI struct {
	agentserverv1.UnimplementedAssistantServiceServer
	agentserverv1.UnimplementedRunServiceServer
	agentserverv1.UnimplementedClusterServiceServer
	agentserverv1.UnimplementedThreadServiceServer

	// err, when set, answers every call.
	err error
	// assistant answers GetAssistant.
	assistant *agentserverv1.Assistant
	// run answers GetRun and CancelRun, and is what CreateRun echoes into.
	run *agentserverv1.Run
	// waits answers successive WaitRun calls; the last one repeats. When it is empty WaitRun
	// behaves like the real gateway for a run that never ends: it blocks for the request's
	// timeout and returns the run RUNNING.
	waits []*agentserverv1.Run
	// runPages, assistantPages and workerPages answer list calls by page token.
	runPages       map[string]*agentserverv1.ListRunsResponse
	assistantPages map[string]*agentserverv1.ListAssistantsResponse
	workerPages    map[string]*agentserverv1.ListWorkersResponse
	threadPages    map[string]*agentserverv1.ListThreadsResponse
	eventPages     map[string]*agentserverv1.ListRunEventsResponse
	// runs, when set, answers successive GetRun calls instead of run; the last one repeats.
	runs []*agentserverv1.Run
	// thread answers GetThread; threadState answers GetThreadState.
	thread      *agentserverv1.Thread
	threadState *agentserverv1.ThreadState
	// events is the run's event log that StreamRunEvents sends from, after the request's
	// after_seq, as the real gateway does.
	events []*agentserverv1.RunEvent
	// streams scripts successive StreamRunEvents calls; once they are used up, a call sends
	// every event after after_seq and ends the stream.
	streams []streamScript
	// streaming, when set, receives the request of each stream that blocks (see
	// streamScript.block) once it has sent its events.
	streaming chan *agentserverv1.StreamRunEventsRequest

	mu    sync.Mutex
	calls []fakeCall
}

// fakeCall is one recorded request.
type fakeCall struct {
	method string // short method name, e.g. "CreateRun"
	req    proto.Message
	md     metadata.MD
}

// startFake serves f on a loopback port until the test ends and returns its address.
func startFake(t *testing.T, f *fakeAPI) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer(grpc.UnaryInterceptor(f.record), grpc.StreamInterceptor(f.recordStream))
	agentserverv1.RegisterAssistantServiceServer(srv, f)
	agentserverv1.RegisterRunServiceServer(srv, f)
	agentserverv1.RegisterClusterServiceServer(srv, f)
	agentserverv1.RegisterThreadServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func (f *fakeAPI) record(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.calls = append(f.calls, fakeCall{
		method: info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:],
		req:    proto.Clone(req.(proto.Message)),
		md:     md.Copy(),
	})
	f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return handler(ctx, req)
}

// recordStream records a server-streaming call with its one request, then hands it on.
func (f *fakeAPI) recordStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if f.err != nil {
		return f.err
	}
	return handler(srv, &recordingStream{ServerStream: ss, f: f, method: info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]})
}

// recordingStream records the request of a server-streaming call as the handler reads it.
type recordingStream struct {
	grpc.ServerStream
	f      *fakeAPI
	method string
}

func (s *recordingStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	md, _ := metadata.FromIncomingContext(s.Context())
	s.f.mu.Lock()
	s.f.calls = append(s.f.calls, fakeCall{method: s.method, req: proto.Clone(m.(proto.Message)), md: md.Copy()})
	s.f.mu.Unlock()
	return nil
}

// requests returns the recorded requests of method, in order.
func (f *fakeAPI) requests(method string) []proto.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []proto.Message
	for _, c := range f.calls {
		if c.method == method {
			out = append(out, c.req)
		}
	}
	return out
}

// methods returns the names of all recorded calls, in order.
func (f *fakeAPI) methods() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, len(f.calls))
	for i, c := range f.calls {
		out[i] = c.method
	}
	return out
}

// auth returns the authorization metadata of the i-th recorded call.
func (f *fakeAPI) auth(i int) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[i].md.Get("authorization")
}

// only returns the single recorded request of method, failing the test otherwise.
func only[M proto.Message](t *testing.T, f *fakeAPI, method string) M {
	t.Helper()
	reqs := f.requests(method)
	require.Len(t, reqs, 1, "requests of %s; all calls: %v", method, f.methods())
	return reqs[0].(M)
}

func (f *fakeAPI) CreateAssistant(_ context.Context, req *agentserverv1.CreateAssistantRequest) (*agentserverv1.Assistant, error) {
	a := proto.CloneOf(req.GetAssistant())
	a.Name = "assistants/" + req.GetAssistantId()
	a.Version = 1
	return a, nil
}

func (f *fakeAPI) GetAssistant(_ context.Context, req *agentserverv1.GetAssistantRequest) (*agentserverv1.Assistant, error) {
	if f.assistant == nil {
		return nil, status.Errorf(codes.NotFound, "%s not found", req.GetName())
	}
	return f.assistant, nil
}

func (f *fakeAPI) ListAssistants(_ context.Context, req *agentserverv1.ListAssistantsRequest) (*agentserverv1.ListAssistantsResponse, error) {
	if p, ok := f.assistantPages[req.GetPageToken()]; ok {
		return p, nil
	}
	return nil, status.Errorf(codes.InvalidArgument, "bad page token %q", req.GetPageToken())
}

func (f *fakeAPI) UpdateAssistant(_ context.Context, req *agentserverv1.UpdateAssistantRequest) (*agentserverv1.Assistant, error) {
	a := proto.CloneOf(req.GetAssistant())
	a.Version = 2
	return a, nil
}

func (f *fakeAPI) DeleteAssistant(context.Context, *agentserverv1.DeleteAssistantRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (f *fakeAPI) CreateRun(_ context.Context, req *agentserverv1.CreateRunRequest) (*agentserverv1.Run, error) {
	r := proto.CloneOf(req.GetRun())
	if f.run != nil {
		proto.Merge(r, f.run)
	}
	if r.Name == "" {
		r.Name = "runs/r1"
	}
	r.State = agentserverv1.Run_QUEUED
	return r, nil
}

func (f *fakeAPI) GetRun(_ context.Context, req *agentserverv1.GetRunRequest) (*agentserverv1.Run, error) {
	f.mu.Lock()
	if len(f.runs) > 0 {
		next := f.runs[0]
		if len(f.runs) > 1 {
			f.runs = f.runs[1:]
		}
		f.mu.Unlock()
		return next, nil
	}
	f.mu.Unlock()
	if f.run == nil {
		return nil, status.Errorf(codes.NotFound, "%s not found", req.GetName())
	}
	return f.run, nil
}

func (f *fakeAPI) CancelRun(_ context.Context, req *agentserverv1.CancelRunRequest) (*agentserverv1.Run, error) {
	return &agentserverv1.Run{Name: req.GetName(), State: agentserverv1.Run_CANCELLED}, nil
}

func (f *fakeAPI) ListRuns(_ context.Context, req *agentserverv1.ListRunsRequest) (*agentserverv1.ListRunsResponse, error) {
	if p, ok := f.runPages[req.GetPageToken()]; ok {
		return p, nil
	}
	return nil, status.Errorf(codes.InvalidArgument, "bad page token %q", req.GetPageToken())
}

func (f *fakeAPI) WaitRun(ctx context.Context, req *agentserverv1.WaitRunRequest) (*agentserverv1.Run, error) {
	f.mu.Lock()
	var next *agentserverv1.Run
	if len(f.waits) > 0 {
		next = f.waits[0]
		if len(f.waits) > 1 {
			f.waits = f.waits[1:]
		}
	}
	f.mu.Unlock()
	if next != nil {
		return next, nil
	}
	t := time.NewTimer(req.GetTimeout().AsDuration())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return &agentserverv1.Run{Name: req.GetName(), State: agentserverv1.Run_RUNNING}, nil
	}
}

func (f *fakeAPI) ResumeRun(_ context.Context, req *agentserverv1.ResumeRunRequest) (*agentserverv1.Run, error) {
	return &agentserverv1.Run{Name: req.GetName(), State: agentserverv1.Run_QUEUED}, nil
}

func (f *fakeAPI) ListRunEvents(_ context.Context, req *agentserverv1.ListRunEventsRequest) (*agentserverv1.ListRunEventsResponse, error) {
	if p, ok := f.eventPages[req.GetPageToken()]; ok {
		return p, nil
	}
	return nil, status.Errorf(codes.InvalidArgument, "bad page token %q", req.GetPageToken())
}

// streamScript is what one StreamRunEvents call does.
type streamScript struct {
	// send is how many events after after_seq it sends (fewer if the log has fewer).
	send int
	// rewind makes it start this many events before after_seq, as a faulty server would.
	rewind int
	// err ends the call after the events are sent; nil ends the stream cleanly.
	err error
	// block, instead, keeps the stream open until the client goes away, like the gateway
	// does while a run is live (or INTERRUPTED).
	block bool
}

func (f *fakeAPI) StreamRunEvents(req *agentserverv1.StreamRunEventsRequest, stream grpc.ServerStreamingServer[agentserverv1.RunEvent]) error {
	f.mu.Lock()
	script := streamScript{send: len(f.events)}
	if len(f.streams) > 0 {
		script, f.streams = f.streams[0], f.streams[1:]
	}
	f.mu.Unlock()
	first := len(f.events)
	for i, ev := range f.events {
		if ev.GetSeq() > req.GetAfterSeq() {
			first = i
			break
		}
	}
	for _, ev := range f.events[max(first-script.rewind, 0):min(first+script.send, len(f.events))] {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	if script.block {
		if f.streaming != nil {
			f.streaming <- req
		}
		<-stream.Context().Done()
		return stream.Context().Err()
	}
	return script.err
}

func (f *fakeAPI) CreateThread(_ context.Context, req *agentserverv1.CreateThreadRequest) (*agentserverv1.Thread, error) {
	t := proto.CloneOf(req.GetThread())
	t.Name = "threads/t1"
	return t, nil
}

func (f *fakeAPI) GetThread(_ context.Context, req *agentserverv1.GetThreadRequest) (*agentserverv1.Thread, error) {
	if f.thread == nil {
		return nil, status.Errorf(codes.NotFound, "%s not found", req.GetName())
	}
	return f.thread, nil
}

func (f *fakeAPI) ListThreads(_ context.Context, req *agentserverv1.ListThreadsRequest) (*agentserverv1.ListThreadsResponse, error) {
	if p, ok := f.threadPages[req.GetPageToken()]; ok {
		return p, nil
	}
	return nil, status.Errorf(codes.InvalidArgument, "bad page token %q", req.GetPageToken())
}

func (f *fakeAPI) DeleteThread(context.Context, *agentserverv1.DeleteThreadRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (f *fakeAPI) GetThreadState(_ context.Context, req *agentserverv1.GetThreadStateRequest) (*agentserverv1.ThreadState, error) {
	if f.threadState == nil {
		return nil, status.Errorf(codes.NotFound, "%s not found", req.GetName())
	}
	return f.threadState, nil
}

func (f *fakeAPI) ListWorkers(_ context.Context, req *agentserverv1.ListWorkersRequest) (*agentserverv1.ListWorkersResponse, error) {
	if p, ok := f.workerPages[req.GetPageToken()]; ok {
		return p, nil
	}
	return nil, status.Errorf(codes.InvalidArgument, "bad page token %q", req.GetPageToken())
}

// testNow is the clock of every test, so that ages print the same each time.
var testNow = time.Date(2030, 1, 2, 12, 0, 0, 0, time.UTC)

// harness runs agentctl command lines in-process against a fakeAPI.
type harness struct {
	t        *testing.T
	fake     *fakeAPI
	addr     string
	env      map[string]string
	stdin    string
	terminal bool
}

// result is what one command line produced.
type result struct {
	code           int
	stdout, stderr string
}

func newHarness(t *testing.T, f *fakeAPI) *harness {
	t.Helper()
	return &harness{t: t, fake: f, addr: startFake(t, f), env: map[string]string{}}
}

// run executes agentctl with args against the fake; --addr comes from the environment so
// that tests can still pass their own.
func (h *harness) run(args ...string) result {
	h.t.Helper()
	return h.runContext(h.t.Context(), args...)
}

// runContext is run under ctx, which a test cancels to play Ctrl-C.
func (h *harness) runContext(ctx context.Context, args ...string) result {
	h.t.Helper()
	var stdout, stderr bytes.Buffer
	a := newApp(Env{
		Stdin:  strings.NewReader(h.stdin),
		Stdout: &stdout,
		Stderr: &stderr,
		Getenv: func(k string) string {
			if v, ok := h.env[k]; ok {
				return v
			}
			if k == EnvAddr {
				return h.addr
			}
			return ""
		},
		Now:        func() time.Time { return testNow },
		IsTerminal: func(io.Writer) bool { return h.terminal },
	})
	a.waitPace = 0
	a.watch = watchPolicy{backoff: time.Millisecond, maxBackoff: time.Millisecond}
	code := a.run(ctx, args)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// requireProtoEqual fails unless want and got are equal messages, printing both.
func requireProtoEqual(t *testing.T, want, got proto.Message) {
	t.Helper()
	require.True(t, proto.Equal(want, got), "want:\n%s\ngot:\n%s", prototext.Format(want), prototext.Format(got))
}

// requireJSONOf fails unless got is want as -o json prints it: every field present, so an
// unset google.protobuf.Value (Run.prompt) is null, which would read back as a set
// NULL_VALUE and make a comparison of messages fail.
func requireJSONOf(t *testing.T, want proto.Message, got string) {
	t.Helper()
	b, err := jsonOptions.Marshal(want)
	require.NoError(t, err)
	require.JSONEq(t, string(b), got)
}
