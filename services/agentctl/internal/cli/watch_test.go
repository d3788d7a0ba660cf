package cli

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

// runEvent is an event of runs/r1 recorded (100 - seq) seconds before testNow.
func runEvent(t *testing.T, seq int64, typ string, data map[string]any) *agentserverv1.RunEvent {
	t.Helper()
	return &agentserverv1.RunEvent{
		Seq: seq, Run: "runs/r1", Type: typ, Data: mustStruct(t, data),
		CreateTime: timestamppb.New(testNow.Add(-time.Duration(100-seq) * time.Second)),
	}
}

// succeededLog is the log of a run that succeeds after two steps. Its seqs have gaps, as the
// real ones do (they come from one sequence shared by every run).
func succeededLog(t *testing.T) []*agentserverv1.RunEvent {
	return []*agentserverv1.RunEvent{
		runEvent(t, 3, "state", map[string]any{"state": "QUEUED"}),
		runEvent(t, 7, "state", map[string]any{"state": "RUNNING"}),
		runEvent(t, 8, "step_started", map[string]any{"step": "fetch"}),
		runEvent(t, 9, "log", map[string]any{"executor": "echo", "line": "hello\nworld"}),
		runEvent(t, 12, "step_started", map[string]any{"step": "summarize"}),
		runEvent(t, 13, "executor_event", map[string]any{"step": "summarize", "data": map[string]any{"tokens": 5}}),
		runEvent(t, 15, "state", map[string]any{"state": "SUCCEEDED"}),
	}
}

// at renders the time column of the event with seq, in the test machine's time zone.
func at(seq int64) string {
	return testNow.Add(-time.Duration(100-seq) * time.Second).Local().Format(eventTimeLayout)
}

// eventLogLines is how succeededLog prints.
func eventLogLines() string {
	return "" +
		"3      " + at(3) + "  state           QUEUED\n" +
		"7      " + at(7) + "  state           RUNNING\n" +
		"8      " + at(8) + "  step_started    step fetch\n" +
		"9      " + at(9) + `  log             echo: hello\nworld` + "\n" +
		"12     " + at(12) + "  step_started    step summarize\n" +
		"13     " + at(13) + `  executor_event  step summarize: {"tokens":5}` + "\n" +
		"15     " + at(15) + "  state           SUCCEEDED\n"
}

func afterSeqs(t *testing.T, f *fakeAPI) []int64 {
	t.Helper()
	var out []int64
	for _, r := range f.requests("StreamRunEvents") {
		req := r.(*agentserverv1.StreamRunEventsRequest)
		require.Equal(t, "runs/r1", req.GetName())
		out = append(out, req.GetAfterSeq())
	}
	return out
}

func TestRunsWatchPrintsEventsUntilTheStreamEnds(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{events: succeededLog(t), run: runIn(agentserverv1.Run_SUCCEEDED)})
	h.env[EnvAPIKey] = "secret"

	res := h.run("runs", "watch", "r1")

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, eventLogLines(), res.stdout)
	require.Equal(t, "runs/r1 SUCCEEDED; see its output with `agentctl runs get r1`.\n", res.stderr)
	require.Equal(t, []string{"StreamRunEvents", "GetRun"}, h.fake.methods(), "the run is fetched at the end")
	require.Equal(t, []string{"Bearer secret"}, h.fake.auth(0), "the stream carries the API key too")
}

func TestRunsWatchResumesAfterTheLastEventWhenTheStreamBreaks(t *testing.T) {
	t.Parallel()
	unavailable := status.Error(codes.Unavailable, "gateway restarting")
	h := newHarness(t, &fakeAPI{
		events: succeededLog(t),
		run:    runIn(agentserverv1.Run_SUCCEEDED),
		streams: []streamScript{
			{send: 2, err: unavailable},
			{send: 0, err: unavailable},
			// A faulty server that sends again what was received already: shown once.
			{send: 3, rewind: 1, err: unavailable},
			{send: 1}, // ends cleanly before the terminal event: reconnect too
		},
	})

	res := h.run("runs", "watch", "r1")

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, eventLogLines(), res.stdout, "every event once, in order")
	require.Equal(t, []int64{0, 7, 7, 12, 13}, afterSeqs(t, h.fake))
	require.Contains(t, res.stderr, "The event stream broke (Unavailable: gateway restarting); resuming after event 7 in ")
	require.Contains(t, res.stderr, "resuming after event 12 in ")
	require.Contains(t, res.stderr, "The event stream ended early; resuming after event 13 in ")
}

func TestRunsWatchJSONIsOneEventPerLine(t *testing.T) {
	t.Parallel()
	log := succeededLog(t)
	h := newHarness(t, &fakeAPI{
		events:  log,
		run:     runIn(agentserverv1.Run_SUCCEEDED),
		streams: []streamScript{{send: 4, err: status.Error(codes.Unavailable, "gone")}},
	})

	res := h.run("runs", "watch", "r1", "-o", "json")

	require.Equal(t, ExitOK, res.code, res.stderr)
	lines := strings.Split(strings.TrimSuffix(res.stdout, "\n"), "\n")
	require.Len(t, lines, len(log))
	for i, line := range lines {
		var got agentserverv1.RunEvent
		require.NoError(t, protojson.Unmarshal([]byte(line), &got), line)
		requireProtoEqual(t, log[i], &got)
	}
	require.Contains(t, lines[0], `"run":`, "every field is present")
	require.Equal(t, []int64{0, 9}, afterSeqs(t, h.fake))
	require.NotContains(t, res.stderr, "SUCCEEDED", "nothing but events on stdout, and no text on stderr but the break")
}

func TestRunsWatchGivesUpWhenTheGatewayStaysUnavailable(t *testing.T) {
	t.Parallel()
	down := make([]streamScript, 20)
	for i := range down {
		down[i] = streamScript{err: status.Error(codes.Unavailable, "connection refused")}
	}
	h := newHarness(t, &fakeAPI{events: succeededLog(t), streams: down})

	res := h.run("runs", "watch", "r1")

	require.Equal(t, ExitFailure, res.code)
	require.Len(t, h.fake.requests("StreamRunEvents"), 11, "the first try and 10 retries")
	require.Contains(t, res.stderr, "giving up after 11 tries")
	require.Contains(t, res.stderr, "Error: Unavailable: connection refused")
	require.Contains(t, res.stderr, "Is the server running?")
}

func TestRunsWatchDoesNotRetryOtherErrors(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{
		events:  succeededLog(t),
		streams: []streamScript{{send: 1, err: status.Error(codes.PermissionDenied, "not yours")}},
	})

	res := h.run("runs", "watch", "r1")

	require.Equal(t, ExitFailure, res.code)
	require.Equal(t, []string{"StreamRunEvents"}, h.fake.methods())
	require.Contains(t, res.stderr, "Error: PermissionDenied: not yours")
	require.Equal(t, 1, strings.Count(res.stdout, "\n"), "the event before the error is shown")
}

func interruptedRun(t *testing.T) *agentserverv1.Run {
	run := runIn(agentserverv1.Run_INTERRUPTED)
	run.Step = "approve"
	run.Prompt = structpb.NewStructValue(mustStruct(t, map[string]any{"question": "ship it?"}))
	return run
}

func TestRunsWatchStopsWhenTheRunWaitsForInput(t *testing.T) {
	t.Parallel()
	f := &fakeAPI{
		events: []*agentserverv1.RunEvent{
			runEvent(t, 1, "state", map[string]any{"state": "RUNNING"}),
			runEvent(t, 2, "step_started", map[string]any{"step": "approve"}),
			runEvent(t, 3, "state", map[string]any{"state": "INTERRUPTED", "step": "approve", "prompt": map[string]any{"question": "ship it?"}}),
		},
		// The gateway keeps the stream of an INTERRUPTED run open: it may be resumed.
		streams: []streamScript{{send: 3, block: true}},
		run:     interruptedRun(t),
	}
	h := newHarness(t, f)

	res := h.run("runs", "watch", "r1")

	require.Equal(t, ExitInterrupted, res.code, res.stderr)
	require.Contains(t, res.stdout, `state           INTERRUPTED at step approve prompt: {"question":"ship it?"}`)
	require.Equal(t, ""+
		"Error: runs/r1 is INTERRUPTED at step \"approve\": it waits for input\n"+
		"Prompt: {\"question\":\"ship it?\"}\n"+
		"Answer with `agentctl runs resume r1 --value '...'`.\n", res.stderr)
}

func TestRunsWatchGoesOnThroughAnInterruptionInTheHistory(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{
		events: []*agentserverv1.RunEvent{
			runEvent(t, 1, "step_started", map[string]any{"step": "approve"}),
			runEvent(t, 2, "state", map[string]any{"state": "INTERRUPTED", "step": "approve", "prompt": "ok?"}),
			runEvent(t, 3, "state", map[string]any{"state": "QUEUED", "resumed": true}),
			runEvent(t, 4, "step_started", map[string]any{"step": "approve"}),
			runEvent(t, 5, "state", map[string]any{"state": "FAILED", "error": "step approve: boom"}),
		},
		runs: []*agentserverv1.Run{
			runIn(agentserverv1.Run_RUNNING), // when the INTERRUPTED event arrives: resumed already
			{Name: "runs/r1", State: agentserverv1.Run_FAILED, Error: "step approve: boom"},
		},
	})

	res := h.run("runs", "watch", "r1")

	require.Equal(t, ExitFailure, res.code, res.stderr)
	require.Equal(t, 5, strings.Count(res.stdout, "\n"))
	require.Contains(t, res.stdout, "state           QUEUED (resumed)\n")
	require.Contains(t, res.stdout, "state           FAILED error: step approve: boom\n")
	require.Contains(t, res.stderr, "Error: runs/r1 FAILED: step approve: boom")
	require.Equal(t, []string{"StreamRunEvents", "GetRun", "GetRun"}, h.fake.methods())
}

func TestRunsWatchCtrlCLeavesTheRunAlone(t *testing.T) {
	t.Parallel()
	f := &fakeAPI{
		events:    succeededLog(t)[:3],
		streams:   []streamScript{{send: 3, block: true}},
		streaming: make(chan *agentserverv1.StreamRunEventsRequest, 1),
	}
	h := newHarness(t, f)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		<-f.streaming
		cancel()
	}()

	res := h.runContext(ctx, "runs", "watch", "r1")

	require.Equal(t, ExitSignal, res.code, res.stderr)
	require.Contains(t, res.stderr, "Stopped watching; runs/r1 goes on. Check it with `agentctl runs get r1`.")
	require.Equal(t, []string{"StreamRunEvents"}, f.methods(), "no CancelRun, no reconnection")
}

func TestRunsWatchStopsAfterItsTimeout(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{
		events:  succeededLog(t)[:3],
		streams: []streamScript{{send: 3, block: true}},
		run:     runIn(agentserverv1.Run_RUNNING),
	})

	res := h.run("runs", "watch", "r1", "--timeout", "50ms")

	require.Equal(t, ExitFailure, res.code, res.stderr)
	require.Contains(t, res.stderr, "Error: runs/r1 is still RUNNING after 50ms\n")
	require.Contains(t, res.stderr, "Watch longer with `agentctl runs watch r1 --timeout 30m`")
	require.Equal(t, []string{"StreamRunEvents", "GetRun"}, h.fake.methods())
}

func TestRunsWatchShowsProgressOnATerminal(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{events: succeededLog(t), run: runIn(agentserverv1.Run_SUCCEEDED)})
	h.terminal = true

	res := h.run("runs", "watch", "r1")

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, eventLogLines(), res.stdout, "stdout is the same on a terminal")
	for _, want := range []string{
		"runs/r1  RUNNING  step fetch  0 steps done  1m37s  #8 step_started step fetch",
		"runs/r1  RUNNING  step summarize  1 step done  1m37s  #12 step_started step",
		"runs/r1  SUCCEEDED  2 steps done  12s  #15 state SUCCEEDED",
		// The status line is erased before the last word.
		"\r\x1b[Kruns/r1 SUCCEEDED; see its output",
	} {
		require.Contains(t, res.stderr, want)
	}
	for _, line := range strings.Split(res.stderr, "\r\x1b[K") {
		require.LessOrEqual(t, utf8.RuneCountInString(line), 79, "the status line fits the terminal: %q", line)
	}
}

func TestRunsEventsListsEveryPage(t *testing.T) {
	t.Parallel()
	log := succeededLog(t)
	h := newHarness(t, &fakeAPI{eventPages: map[string]*agentserverv1.ListRunEventsResponse{
		"":   {Events: log[:4], NextPageToken: "p2"},
		"p2": {Events: log[4:]},
	}})

	res := h.run("runs", "events", "runs/r1", "--all", "--page-size", "4")

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, eventLogLines(), res.stdout)
	reqs := h.fake.requests("ListRunEvents")
	require.Len(t, reqs, 2)
	for i, token := range []string{"", "p2"} {
		requireProtoEqual(t, &agentserverv1.ListRunEventsRequest{Name: "runs/r1", PageSize: 4, PageToken: token}, reqs[i])
	}

	res = h.run("runs", "events", "r1")
	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, 4, strings.Count(res.stdout, "\n"))
	require.Contains(t, res.stderr, "--page-token p2")

	res = h.run("runs", "events", "r1", "--all", "-o", "json")
	require.Equal(t, ExitOK, res.code, res.stderr)
	var got agentserverv1.ListRunEventsResponse
	require.NoError(t, protojson.Unmarshal([]byte(res.stdout), &got))
	requireProtoEqual(t, &agentserverv1.ListRunEventsResponse{Events: log}, &got)
}

func TestRunsEventsNone(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{eventPages: map[string]*agentserverv1.ListRunEventsResponse{"": {}}})

	res := h.run("runs", "events", "r1")

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Empty(t, res.stdout)
	require.Equal(t, "No events.\n", res.stderr)
}

func TestEventSummary(t *testing.T) {
	t.Parallel()
	tests := []struct {
		typ  string
		data map[string]any
		want string
	}{
		{"state", map[string]any{"state": "QUEUED", "retry": true, "attempt": 2, "error": "exit 1"}, "QUEUED (retry, attempt 2) error: exit 1"},
		{"state", map[string]any{"state": "CANCELLED", "by": "ada"}, `CANCELLED {"by":"ada"}`},
		{"state", map[string]any{"state": "RUNNING", "worker": "w1", "attempt": 1, "epoch": 1}, `RUNNING on w1 {"epoch":1}`},
		{"state", map[string]any{"state": "RUNNING", "worker": "workers/w1", "attempt": 2}, `RUNNING on w1 (attempt 2)`},
		{"log", map[string]any{"executor": "py", "line": "a\tb\x1b[31mred\r"}, `py: a` + "\t" + `b\x1b[31mred\r`},
		{"custom", map[string]any{"b": 1, "a": []any{"x"}}, `{"a":["x"],"b":1}`},
		{"custom", nil, ""},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			ev := &agentserverv1.RunEvent{Type: tt.typ}
			if tt.data != nil {
				ev.Data = mustStruct(t, tt.data)
			}
			require.Equal(t, tt.want, eventSummary(ev))
		})
	}
}
