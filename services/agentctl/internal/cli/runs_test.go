package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

func mustStruct(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	require.NoError(t, err)
	return s
}

func TestRunsCreateMapsFlags(t *testing.T) {
	t.Parallel()
	inputFile := writeFile(t, "input.json", `{"text": "from a file"}`)
	tests := []struct {
		name string
		args []string
		want func(t *testing.T) *agentserverv1.CreateRunRequest
	}{
		{
			name: "every flag",
			args: []string{"--assistant", "summarizer", "--input", `{"text":"hi","n":2}`, "--priority", "9",
				"--timeout", "90s", "--request-id", "job-42"},
			want: func(t *testing.T) *agentserverv1.CreateRunRequest {
				return &agentserverv1.CreateRunRequest{
					RequestId: "job-42",
					Run: &agentserverv1.Run{
						Assistant: "assistants/summarizer",
						Input:     mustStruct(t, map[string]any{"text": "hi", "n": 2}),
						Priority:  proto.Int32(9),
						Timeout:   durationpb.New(90 * time.Second),
					},
				}
			},
		},
		{
			name: "on a thread",
			args: []string{"--assistant", "chat", "--thread", "threads/t1", "--multitask", "ENQUEUE"},
			want: func(*testing.T) *agentserverv1.CreateRunRequest {
				return &agentserverv1.CreateRunRequest{Run: &agentserverv1.Run{
					Assistant: "assistants/chat", Thread: "threads/t1", Multitask: "enqueue",
				}}
			},
		},
		{
			name: "priority 0 is sent, not left to the default",
			args: []string{"--assistant", "assistants/summarizer", "--priority", "0"},
			want: func(*testing.T) *agentserverv1.CreateRunRequest {
				return &agentserverv1.CreateRunRequest{Run: &agentserverv1.Run{
					Assistant: "assistants/summarizer", Priority: proto.Int32(0),
				}}
			},
		},
		{
			name: "no priority leaves it unset",
			args: []string{"--assistant", "summarizer", "--input-file", inputFile},
			want: func(t *testing.T) *agentserverv1.CreateRunRequest {
				return &agentserverv1.CreateRunRequest{Run: &agentserverv1.Run{
					Assistant: "assistants/summarizer",
					Input:     mustStruct(t, map[string]any{"text": "from a file"}),
				}}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, &fakeAPI{})
			res := h.run(append([]string{"runs", "create"}, tt.args...)...)
			require.Equal(t, ExitOK, res.code, res.stderr)
			require.Equal(t, "created runs/r1 (QUEUED)\n", res.stdout)
			require.Contains(t, res.stderr, "agentctl runs wait r1")
			requireProtoEqual(t, tt.want(t), only[*agentserverv1.CreateRunRequest](t, h.fake, "CreateRun"))
		})
	}
}

func TestRunsCreateUsageErrors(t *testing.T) {
	t.Parallel()
	inputFile := writeFile(t, "input.json", `{}`)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no assistant", []string{"--input", "{}"}, "--assistant is required"},
		{"both inputs", []string{"--assistant", "a", "--input", "{}", "--input-file", inputFile}, "not both"},
		{"input not an object", []string{"--assistant", "a", "--input", "[1,2]"}, "--input: want a JSON object"},
		{"input not JSON", []string{"--assistant", "a", "--input", "{text:"}, "--input: want a JSON object"},
		{"missing input file", []string{"--assistant", "a", "--input-file", inputFile + ".missing"}, "--input-file:"},
		{"wrong kind of name", []string{"--assistant", "runs/r1"}, `"runs/r1" is not an assistant id`},
		{"bad priority", []string{"--assistant", "a", "--priority", "high"}, "invalid argument \"high\""},
		{"negative timeout", []string{"--assistant", "a", "--timeout", "-1s"}, "--timeout must be positive"},
		{"multitask without thread", []string{"--assistant", "a", "--multitask", "enqueue"}, "--multitask needs --thread"},
		{"unknown multitask", []string{"--assistant", "a", "--thread", "t1", "--multitask", "later"}, "want one of reject, enqueue, interrupt"},
		{"wrong kind of thread", []string{"--assistant", "a", "--thread", "runs/r1"}, `"runs/r1" is not a thread id`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, &fakeAPI{})
			res := h.run(append([]string{"runs", "create"}, tt.args...)...)
			require.Equal(t, ExitUsage, res.code, res.stderr)
			require.Contains(t, res.stderr, tt.want)
			require.Empty(t, h.fake.methods(), "a usage error sends nothing")
		})
	}
}

func listedRun(i int) *agentserverv1.Run {
	return &agentserverv1.Run{
		Name:        fmt.Sprintf("runs/r%d", i),
		Assistant:   "assistants/summarizer",
		State:       agentserverv1.Run_SUCCEEDED,
		Attempt:     1,
		MaxAttempts: 3,
		Worker:      "workers/w1",
		CreateTime:  timestamppb.New(testNow.Add(-time.Duration(i) * time.Hour)),
	}
}

func pagedRuns() map[string]*agentserverv1.ListRunsResponse {
	return map[string]*agentserverv1.ListRunsResponse{
		"":   {Runs: []*agentserverv1.Run{listedRun(1), listedRun(2)}, NextPageToken: "p2"},
		"p2": {Runs: []*agentserverv1.Run{listedRun(3)}, NextPageToken: "p3"},
		"p3": {Runs: []*agentserverv1.Run{listedRun(4)}},
	}
}

func TestRunsListAllFollowsNextPageToken(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{runPages: pagedRuns()})

	res := h.run("runs", "list", "--all", "--state", "succeeded", "--assistant", "summarizer", "--page-size", "2")

	require.Equal(t, ExitOK, res.code, res.stderr)
	reqs := h.fake.requests("ListRuns")
	require.Len(t, reqs, 3)
	for i, token := range []string{"", "p2", "p3"} {
		requireProtoEqual(t, &agentserverv1.ListRunsRequest{
			PageSize: 2, PageToken: token, State: agentserverv1.Run_SUCCEEDED, Assistant: "assistants/summarizer",
		}, reqs[i])
	}
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	require.Len(t, lines, 5)
	require.Equal(t, "ID  ASSISTANT   STATE      PRIORITY  ATTEMPT  WORKER  CREATED", lines[0])
	require.Equal(t, "r4  summarizer  SUCCEEDED  -         1/3      w1      4h ago", lines[4])
	require.Empty(t, res.stderr)
}

func TestRunsListOnePageHintsAtTheRest(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{runPages: pagedRuns()})

	res := h.run("runs", "list")

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Len(t, h.fake.requests("ListRuns"), 1)
	require.Len(t, strings.Split(strings.TrimSpace(res.stdout), "\n"), 3)
	require.Contains(t, res.stderr, "--page-token p2")
}

func TestRunsListAllJSONIsOneObject(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{runPages: pagedRuns()})

	res := h.run("runs", "list", "--all", "-o", "json")

	require.Equal(t, ExitOK, res.code, res.stderr)
	requireJSONOf(t, &agentserverv1.ListRunsResponse{Runs: []*agentserverv1.Run{
		listedRun(1), listedRun(2), listedRun(3), listedRun(4),
	}}, res.stdout)
}

func TestRunsListRejectsUnknownState(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{})

	res := h.run("runs", "list", "--state", "done")

	require.Equal(t, ExitUsage, res.code)
	require.Contains(t, res.stderr, "QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, INTERRUPTED")
	require.Empty(t, h.fake.methods())
}

func TestRunsListFollowingARepeatedTokenStops(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{runPages: map[string]*agentserverv1.ListRunsResponse{
		"":  {Runs: []*agentserverv1.Run{listedRun(1)}, NextPageToken: "a"},
		"a": {Runs: []*agentserverv1.Run{listedRun(2)}, NextPageToken: "a"},
	}})

	res := h.run("runs", "list", "--all")

	require.Equal(t, ExitFailure, res.code)
	require.Contains(t, res.stderr, `page token "a" twice`)
}

func runIn(state agentserverv1.Run_State) *agentserverv1.Run {
	return &agentserverv1.Run{Name: "runs/r1", State: state, Attempt: 1}
}

func TestRunsWaitLoopsUntilTerminal(t *testing.T) {
	t.Parallel()
	done := runIn(agentserverv1.Run_SUCCEEDED)
	done.Output = mustStruct(t, map[string]any{"answer": 42, "words": []any{"a", "b"}})
	h := newHarness(t, &fakeAPI{waits: []*agentserverv1.Run{
		runIn(agentserverv1.Run_QUEUED), runIn(agentserverv1.Run_RUNNING), runIn(agentserverv1.Run_RUNNING), done,
	}})

	res := h.run("runs", "wait", "r1")

	require.Equal(t, ExitOK, res.code, res.stderr)
	reqs := h.fake.requests("WaitRun")
	require.Len(t, reqs, 4)
	for _, r := range reqs {
		requireProtoEqual(t, &agentserverv1.WaitRunRequest{Name: "runs/r1", Timeout: durationpb.New(30 * time.Second)}, r)
	}
	var output map[string]any
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &output), res.stdout)
	require.Equal(t, map[string]any{"answer": 42.0, "words": []any{"a", "b"}}, output)
	require.Empty(t, res.stderr, "no spinner when stderr is not a terminal")
}

func TestRunsWaitExitCodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		state  agentserverv1.Run_State
		code   int
		stderr string
	}{
		{agentserverv1.Run_FAILED, ExitFailure, "Error: runs/r1 FAILED: step process: boom"},
		{agentserverv1.Run_CANCELLED, ExitFailure, "Error: runs/r1 CANCELLED"},
		{agentserverv1.Run_TIMED_OUT, ExitFailure, "Error: runs/r1 TIMED_OUT"},
		{agentserverv1.Run_INTERRUPTED, ExitInterrupted, "runs/r1 is INTERRUPTED: it waits for input"},
	}
	for _, tt := range tests {
		t.Run(tt.state.String(), func(t *testing.T) {
			t.Parallel()
			end := runIn(tt.state)
			if tt.state == agentserverv1.Run_FAILED {
				end.Error = "step process: boom"
			}
			h := newHarness(t, &fakeAPI{waits: []*agentserverv1.Run{runIn(agentserverv1.Run_RUNNING), end}})

			res := h.run("runs", "wait", "runs/r1")

			require.Equal(t, tt.code, res.code, res.stderr)
			require.Contains(t, res.stderr, tt.stderr)
			require.Empty(t, res.stdout)
			require.Len(t, h.fake.requests("WaitRun"), 2)
		})
	}
}

func TestRunsWaitJSONPrintsTheRunAndKeepsTheExitCode(t *testing.T) {
	t.Parallel()
	end := runIn(agentserverv1.Run_FAILED)
	end.Error = "boom"
	h := newHarness(t, &fakeAPI{waits: []*agentserverv1.Run{end}})

	res := h.run("runs", "wait", "r1", "-o", "json")

	require.Equal(t, ExitFailure, res.code)
	requireJSONOf(t, end, res.stdout)
	require.Contains(t, res.stderr, "boom")
}

func TestRunsWaitGivesUpAfterItsTimeout(t *testing.T) {
	t.Parallel()
	// With no scripted replies the fake blocks like a real gateway and the run stays RUNNING.
	h := newHarness(t, &fakeAPI{})

	res := h.run("runs", "wait", "r1", "--timeout", "100ms")

	require.Equal(t, ExitFailure, res.code)
	require.Contains(t, res.stderr, "runs/r1 is still RUNNING after 100ms")
	require.Contains(t, res.stderr, "agentctl runs cancel r1")
	for _, r := range h.fake.requests("WaitRun") {
		require.LessOrEqual(t, r.(*agentserverv1.WaitRunRequest).GetTimeout().AsDuration(), 100*time.Millisecond,
			"no call waits past --timeout")
	}
}

func TestRunsWaitShowsSpinnerOnATerminal(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{waits: []*agentserverv1.Run{runIn(agentserverv1.Run_RUNNING), runIn(agentserverv1.Run_SUCCEEDED)}})
	h.terminal = true

	res := h.run("runs", "wait", "r1")

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Contains(t, res.stderr, "runs/r1 RUNNING")
	require.Equal(t, "{}\n", res.stdout)
}

func TestRunsCreateWait(t *testing.T) {
	t.Parallel()
	done := runIn(agentserverv1.Run_SUCCEEDED)
	done.Output = mustStruct(t, map[string]any{"ok": true})
	h := newHarness(t, &fakeAPI{waits: []*agentserverv1.Run{runIn(agentserverv1.Run_RUNNING), done}})

	res := h.run("runs", "create", "--assistant", "summarizer", "--timeout", "5m", "--wait")

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, []string{"CreateRun", "WaitRun", "WaitRun"}, h.fake.methods())
	require.JSONEq(t, `{"ok": true}`, res.stdout)
	require.Equal(t, "created runs/r1\n", res.stderr)
	requireProtoEqual(t, &agentserverv1.CreateRunRequest{Run: &agentserverv1.Run{
		Assistant: "assistants/summarizer", Timeout: durationpb.New(5 * time.Minute),
	}}, only[*agentserverv1.CreateRunRequest](t, h.fake, "CreateRun"))
}

func TestRunsGetAndCancel(t *testing.T) {
	t.Parallel()
	run := &agentserverv1.Run{
		Name: "runs/r1", Assistant: "assistants/summarizer", AssistantVersion: 4,
		State: agentserverv1.Run_FAILED, Error: "boom", Attempt: 3, MaxAttempts: 3,
		Worker: "workers/w1", Priority: proto.Int32(5),
		Input:      mustStruct(t, map[string]any{"b": 1, "a": "x"}),
		CreateTime: timestamppb.New(testNow.Add(-10 * time.Minute)),
	}
	h := newHarness(t, &fakeAPI{run: run})

	res := h.run("runs", "get", "r1")
	require.Equal(t, ExitOK, res.code, res.stderr)
	requireProtoEqual(t, &agentserverv1.GetRunRequest{Name: "runs/r1"}, only[*agentserverv1.GetRunRequest](t, h.fake, "GetRun"))
	for _, want := range []string{
		"Assistant: assistants/summarizer (version 4)\n",
		"State:     FAILED\n",
		"Error:     boom\n",
		"Attempt:   3/3\n",
		"Priority:  5\n",
		"Timeout:   assistant default\n",
		"Started:   -\n",
		`Input:     {"a":"x","b":1}` + "\n",
		"(10m ago)",
	} {
		require.Contains(t, res.stdout, want)
	}

	res = h.run("runs", "get", "r1", "--output", "json")
	require.Equal(t, ExitOK, res.code, res.stderr)
	requireJSONOf(t, run, res.stdout)

	res = h.run("runs", "cancel", "runs/r1")
	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, "cancelled runs/r1 (now CANCELLED)\n", res.stdout)
	requireProtoEqual(t, &agentserverv1.CancelRunRequest{Name: "runs/r1"}, only[*agentserverv1.CancelRunRequest](t, h.fake, "CancelRun"))
}

func TestRunsGetShowsWhatAnInterruptedRunAsks(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{run: interruptedRun(t)})

	res := h.run("runs", "get", "r1")

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Contains(t, res.stdout, "State:     INTERRUPTED\n")
	require.Contains(t, res.stdout, "Step:      approve\n")
	require.Contains(t, res.stdout, `Prompt:    {"question":"ship it?"}`+"\n")
	require.Equal(t, "It waits for input. Answer with `agentctl runs resume r1 --value '...'`.\n", res.stderr)

	res = h.run("runs", "get", "r1", "-o", "json")
	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Empty(t, res.stderr, "no hint with -o json")
}

func TestRunsWaitShowsWhatAnInterruptedRunAsks(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{waits: []*agentserverv1.Run{interruptedRun(t)}})

	res := h.run("runs", "wait", "r1")

	require.Equal(t, ExitInterrupted, res.code, res.stderr)
	require.Empty(t, res.stdout)
	require.Equal(t, ""+
		"Error: runs/r1 is INTERRUPTED at step \"approve\": it waits for input\n"+
		"Prompt: {\"question\":\"ship it?\"}\n"+
		"Answer with `agentctl runs resume r1 --value '...'`.\n", res.stderr)
}

func TestRunsResumeSendsTheValue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		args  []string
		stdin string
		want  *structpb.Value
	}{
		{"object", []string{"--value", `{"approved": true, "note": "ok"}`}, "",
			structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
				"approved": structpb.NewBoolValue(true), "note": structpb.NewStringValue("ok"),
			}})},
		{"string from stdin", []string{"--value-file", "-"}, `"yes"`, structpb.NewStringValue("yes")},
		{"null", []string{"--value", "null"}, "", structpb.NewNullValue()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, &fakeAPI{})
			h.stdin = tt.stdin

			res := h.run(append([]string{"runs", "resume", "r1"}, tt.args...)...)

			require.Equal(t, ExitOK, res.code, res.stderr)
			require.Equal(t, "resumed runs/r1 (QUEUED)\n", res.stdout)
			require.Equal(t, "wait for it with: agentctl runs wait r1\n", res.stderr)
			requireProtoEqual(t, &agentserverv1.ResumeRunRequest{Name: "runs/r1", Value: tt.want},
				only[*agentserverv1.ResumeRunRequest](t, h.fake, "ResumeRun"))
		})
	}
}

func TestRunsResumeWait(t *testing.T) {
	t.Parallel()
	done := runIn(agentserverv1.Run_SUCCEEDED)
	done.Output = mustStruct(t, map[string]any{"shipped": true})
	h := newHarness(t, &fakeAPI{waits: []*agentserverv1.Run{runIn(agentserverv1.Run_RUNNING), done}})

	res := h.run("runs", "resume", "r1", "--value", "true", "--wait")

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, []string{"ResumeRun", "WaitRun", "WaitRun"}, h.fake.methods())
	require.JSONEq(t, `{"shipped": true}`, res.stdout)
	require.Equal(t, "resumed runs/r1\n", res.stderr)
}

func TestRunsResumeUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no value", nil, "--value or --value-file is required"},
		{"both", []string{"--value", "1", "--value-file", "-"}, "not both"},
		{"bare word", []string{"--value", "yes"}, `--value: want JSON (a string needs its quotes, e.g. '"yes"')`},
		{"missing file", []string{"--value-file", "/nonexistent/answer.json"}, "--value-file:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, &fakeAPI{})
			res := h.run(append([]string{"runs", "resume", "r1"}, tt.args...)...)
			require.Equal(t, ExitUsage, res.code, res.stderr)
			require.Contains(t, res.stderr, tt.want)
			require.Empty(t, h.fake.methods())
		})
	}
}
