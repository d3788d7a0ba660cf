package worker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/pkg/inproc"
)

// standInScheduler speaks the scheduler protocol to one worker session: it grants the
// features it is given, sends its assignments, and records what the worker sends. A test
// stand-in, not the scheduler.
type standInScheduler struct {
	schedulerv1.UnimplementedSchedulerServiceServer
	features []string
	assign   []*schedulerv1.Assignment

	mu   sync.Mutex
	reg  *schedulerv1.Register
	got  []*schedulerv1.ConnectRequest
	send func(*schedulerv1.ConnectResponse) error
}

func (s *standInScheduler) Connect(stream grpc.BidiStreamingServer[schedulerv1.ConnectRequest, schedulerv1.ConnectResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.reg, s.send = first.GetRegister(), stream.Send
	s.mu.Unlock()
	if err := stream.Send(&schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_Registered{Registered: &schedulerv1.Registered{
		SchedulerId: "stand-in", HeartbeatInterval: durationpb.New(time.Hour), Features: s.features,
	}}}); err != nil {
		return err
	}
	for _, a := range s.assign {
		if err := stream.Send(&schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_Assignment{Assignment: a}}); err != nil {
			return err
		}
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.got = append(s.got, m)
		s.mu.Unlock()
	}
}

// received returns the messages of the worker after its Register, heartbeats left out.
func (s *standInScheduler) received() []*schedulerv1.ConnectRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*schedulerv1.ConnectRequest
	for _, m := range s.got {
		if m.GetHeartbeat() == nil {
			out = append(out, m)
		}
	}
	return out
}

func (s *standInScheduler) respond(t *testing.T, m *schedulerv1.ConnectResponse) {
	t.Helper()
	s.mu.Lock()
	send := s.send
	s.mu.Unlock()
	require.NoError(t, send(m))
}

// runWorker runs a worker with the given event hold against the stand-in, with runs that
// execute testdata/gpu_env_executor.py (each answers once release exists).
func runWorker(t *testing.T, s *standInScheduler, hold time.Duration, release string, runs ...string) *Worker {
	t.Helper()
	return runWorkerWith(t, s, hold, release, nil, runs...)
}

// runWorkerWith is runWorker with mod (if not nil) applied to the worker's configuration.
func runWorkerWith(t *testing.T, s *standInScheduler, hold time.Duration, release string, mod func(*Config), runs ...string) *Worker {
	t.Helper()
	script, err := filepath.Abs(filepath.Join(testdata, "gpu_env_executor.py"))
	require.NoError(t, err)
	flowYAML := fmt.Sprintf("executors:\n  - name: env\n    command: [python3, %q]\n", script)
	dir := t.TempDir()
	for _, run := range runs {
		state, err := structpb.NewStruct(map[string]any{"out": filepath.Join(dir, filepath.Base(run)+".json"), "release": release})
		require.NoError(t, err)
		s.assign = append(s.assign, &schedulerv1.Assignment{Run: run, Epoch: 3, Assistant: "assistants/env", AssistantVersion: 1,
			Flow: flowYAML, State: state, Attempt: 1, SlotType: "cpu"})
	}
	w := newStandInWorker(t, s, "cpu=2", mod)
	w.events.hold = hold // beyond what WORKER_EVENT_HOLD allows: no timing in the tests that need none
	serve(t, w)
	return w
}

// newStandInWorker is a worker with slots, connected in process to s.
func newStandInWorker(t *testing.T, s *standInScheduler, slots string, mods ...func(*Config)) *Worker {
	t.Helper()
	ch := new(inproc.Channel)
	schedulerv1.RegisterSchedulerServiceServer(ch, s)
	cfg := Defaults()
	cfg.Slots, cfg.WorkDir = slots, t.TempDir()
	for _, mod := range mods {
		if mod != nil {
			mod(&cfg)
		}
	}
	w, err := New(cfg, slog.New(slog.DiscardHandler), WithSchedulerConn(ch))
	require.NoError(t, err)
	return w
}

// serve runs w until the test ends.
func serve(t *testing.T, w *Worker) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; w.exec.Close() })
}

// kinds describes messages as "event:<run>" and "result:<run>+<events it carries>".
func kinds(ms []*schedulerv1.ConnectRequest) []string {
	var out []string
	for _, m := range ms {
		switch {
		case m.GetEvent() != nil:
			out = append(out, "event:"+m.GetEvent().GetRun()+":"+m.GetEvent().GetType())
		case m.GetResult() != nil:
			out = append(out, fmt.Sprintf("result:%s+%d", m.GetResult().GetRun(), len(m.GetResult().GetEvents())))
		default:
			out = append(out, fmt.Sprintf("%T", m.GetMsg()))
		}
	}
	return out
}

func (w *Worker) unackedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.unacked)
}

// With a scheduler that takes them, a run's step_started goes inside its result, and one
// ResultAcks acknowledges both results.
func TestEventsGoWithTheirResult(t *testing.T) {
	t.Parallel()
	release := filepath.Join(t.TempDir(), "release")
	require.NoError(t, os.WriteFile(release, nil, 0o644))
	s := &standInScheduler{features: []string{featureResultAcks, featureResultEvents}}
	w := runWorker(t, s, 5*time.Second, release, "runs/a", "runs/b")
	require.Eventually(t, func() bool { return len(s.received()) == 2 }, 30*time.Second, 5*time.Millisecond)
	require.ElementsMatch(t, []string{"result:runs/a+1", "result:runs/b+1"}, kinds(s.received()))
	require.Equal(t, []string{featureResultAcks, featureResultEvents}, s.reg.GetFeatures())
	ev := s.received()[0].GetResult().GetEvents()[0]
	require.Equal(t, "step_started", ev.GetType())
	require.EqualValues(t, 3, ev.GetEpoch())
	require.Equal(t, 2, w.unackedCount())
	s.respond(t, &schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_ResultAcks{ResultAcks: &schedulerv1.ResultAcks{Acks: []*schedulerv1.ResultAck{
		{Run: "runs/a", Epoch: 3}, {Run: "runs/b", Epoch: 2}, // b's ack is of another claim: kept
	}}}})
	require.Eventually(t, func() bool { return w.unackedCount() == 1 }, 10*time.Second, 5*time.Millisecond)
	s.respond(t, &schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_ResultAcks{ResultAcks: &schedulerv1.ResultAcks{Acks: []*schedulerv1.ResultAck{{Run: "runs/b", Epoch: 3}}}}})
	require.Eventually(t, func() bool { return w.unackedCount() == 0 }, 10*time.Second, 5*time.Millisecond)
}

// A scheduler that does not take events in results (an older one) gets each event on its
// own, before its result, and the result without it; its ResultAck works as before.
func TestEventsGoAloneToAnOlderScheduler(t *testing.T) {
	t.Parallel()
	release := filepath.Join(t.TempDir(), "release")
	require.NoError(t, os.WriteFile(release, nil, 0o644))
	s := &standInScheduler{}
	w := runWorker(t, s, 5*time.Second, release, "runs/a")
	require.Eventually(t, func() bool { return len(s.received()) == 2 }, 30*time.Second, 5*time.Millisecond)
	require.Equal(t, []string{"event:runs/a:step_started", "result:runs/a+0"}, kinds(s.received()))
	w.mu.Lock()
	kept := len(w.unacked["runs/a"].GetEvents())
	w.mu.Unlock()
	require.Equal(t, 1, kept, "the result kept for resending is left whole")
	s.respond(t, &schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_ResultAck{ResultAck: &schedulerv1.ResultAck{Run: "runs/a", Epoch: 3}}})
	require.Eventually(t, func() bool { return w.unackedCount() == 0 }, 10*time.Second, 5*time.Millisecond)
}

// The events of a run that goes on longer than the hold are sent on their own then.
func TestHeldEventsGoAloneAfterTheHold(t *testing.T) {
	t.Parallel()
	release := filepath.Join(t.TempDir(), "release")
	s := &standInScheduler{features: []string{featureResultAcks, featureResultEvents}}
	w := runWorker(t, s, 50*time.Millisecond, release, "runs/a")
	require.Eventually(t, func() bool { return len(s.received()) == 1 }, 30*time.Second, 5*time.Millisecond)
	require.Equal(t, []string{"event:runs/a:step_started"}, kinds(s.received()), "sent before the run ends")
	require.NoError(t, os.WriteFile(release, nil, 0o644))
	require.Eventually(t, func() bool { return len(s.received()) == 2 }, 30*time.Second, 5*time.Millisecond)
	require.Equal(t, "result:runs/a+0", kinds(s.received())[1])
	s.respond(t, &schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_ResultAcks{ResultAcks: &schedulerv1.ResultAcks{Acks: []*schedulerv1.ResultAck{{Run: "runs/a", Epoch: 3}}}}})
	require.Eventually(t, func() bool { return w.unackedCount() == 0 }, 10*time.Second, 5*time.Millisecond)
}

func TestEventHold(t *testing.T) {
	t.Parallel()
	var pushed []string
	h := newEventHold(time.Hour, func(m *schedulerv1.ConnectRequest) {
		pushed = append(pushed, fmt.Sprintf("%s@%d:%s", m.GetEvent().GetRun(), m.GetEvent().GetEpoch(), m.GetEvent().GetType()))
	})
	ev := func(run string, epoch int64, typ string) *schedulerv1.RunEvent {
		return &schedulerv1.RunEvent{Run: run, Epoch: epoch, Type: typ}
	}
	h.add(ev("runs/a", 1, "x"))
	h.add(ev("runs/a", 2, "y")) // a newer claim: the older one's events go at once
	require.Equal(t, []string{"runs/a@1:x"}, pushed)
	require.Nil(t, h.take("runs/a", 1))
	h.add(ev("runs/b", 1, "z"))
	h.flush("runs/b") // before a checkpoint of b
	require.Equal(t, []string{"runs/a@1:x", "runs/b@1:z"}, pushed)
	got := h.take("runs/a", 2)
	require.Len(t, got, 1)
	require.Equal(t, "y", got[0].GetType())
	for i := range maxHeldEventsPerRun {
		h.add(ev("runs/c", 1, fmt.Sprint(i)))
	}
	require.Len(t, pushed, 2+maxHeldEventsPerRun, "a run holds at most maxHeldEventsPerRun events")
	require.Nil(t, h.take("runs/c", 1))

	off := newEventHold(0, func(m *schedulerv1.ConnectRequest) { pushed = append(pushed, "off") })
	off.add(ev("runs/d", 1, "x"))
	require.Equal(t, "off", pushed[len(pushed)-1], "hold 0: sent at once")
	require.Nil(t, off.take("runs/d", 1))

	_, err := New(Config{Slots: "cpu=1", SchedulerAddrs: "x:1", EventHold: 2 * time.Second}, slog.New(slog.DiscardHandler))
	require.ErrorContains(t, err, "WORKER_EVENT_HOLD must be between 0 and 1s (got 2s)")
}

// After a reconnect the worker resends its unacknowledged results, except those still in its
// outbox, which go out from there: each result once, so its events are not written twice.
func TestQueuedResultsAreNotResentTwice(t *testing.T) {
	t.Parallel()
	s := &standInScheduler{}
	w := newStandInWorker(t, s, "cpu=1")
	sent := &schedulerv1.RunResult{Run: "runs/sent", Epoch: 1, Outcome: schedulerv1.RunResult_OUTCOME_SUCCEEDED}
	queued := &schedulerv1.RunResult{Run: "runs/queued", Epoch: 1, Outcome: schedulerv1.RunResult_OUTCOME_SUCCEEDED,
		Events: []*schedulerv1.RunEvent{{Run: "runs/queued", Epoch: 1, Type: "step_started"}}}
	w.unacked[sent.Run], w.unacked[queued.Run] = sent, queued // as a broken session leaves them
	w.outbox.push(&schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Result{Result: queued}})
	serve(t, w)
	require.Eventually(t, func() bool { return len(s.received()) >= 3 }, 10*time.Second, 5*time.Millisecond)
	time.Sleep(100 * time.Millisecond) // a duplicate would follow at once
	require.ElementsMatch(t, []string{"event:runs/queued:step_started", "result:runs/queued+0", "result:runs/sent+0"}, kinds(s.received()))
	require.Len(t, s.reg.GetRunning(), 2, "both keep their leases")
	s.respond(t, &schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_ResultAck{ResultAck: &schedulerv1.ResultAck{Run: "runs/sent", Epoch: 1}}})
	s.respond(t, &schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_ResultAck{ResultAck: &schedulerv1.ResultAck{Run: "runs/queued", Epoch: 1}}})
	require.Eventually(t, func() bool { return w.unackedCount() == 0 }, 10*time.Second, 5*time.Millisecond)
}
