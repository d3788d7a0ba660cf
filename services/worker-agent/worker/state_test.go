package worker

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
)

// echoWorker is a worker with one cpu slot and a one-step flow whose executor answers with
// the state it was sent (testdata/echo_executor.py).
func echoWorker(t *testing.T) (*Worker, string) {
	t.Helper()
	script, err := filepath.Abs(filepath.Join(testdata, "echo_executor.py"))
	require.NoError(t, err)
	w := newStandInWorker(t, &standInScheduler{}, "cpu=1")
	t.Cleanup(func() { w.exec.Close() })
	return w, fmt.Sprintf("executors:\n  - name: echo\n    command: [python3, %q]\n", script)
}

// A run whose executor hands its state back unchanged ends with the assignment's own state
// (no second conversion); a changed state is converted.
func TestUnchangedStateIsTheAssignments(t *testing.T) {
	t.Parallel()
	w, flowYAML := echoWorker(t)
	assignment := func(run string, state map[string]any) *schedulerv1.Assignment {
		s, err := structpb.NewStruct(state)
		require.NoError(t, err)
		return &schedulerv1.Assignment{Run: run, Epoch: 1, Assistant: "assistants/echo", AssistantVersion: 1,
			Flow: flowYAML, State: s, Attempt: 1, SlotType: "cpu"}
	}

	same := assignment("runs/same", map[string]any{"n": 1, "s": "x", "list": []any{true, nil, "y"}, "obj": map[string]any{"k": "v"}})
	res := w.execute(t.Context(), same, nil)
	require.Equal(t, schedulerv1.RunResult_OUTCOME_SUCCEEDED, res.GetOutcome(), res.GetError())
	require.Same(t, same.GetState(), res.GetState())

	changed := assignment("runs/changed", map[string]any{"n": 1, "change": true})
	res = w.execute(t.Context(), changed, nil)
	require.Equal(t, schedulerv1.RunResult_OUTCOME_SUCCEEDED, res.GetOutcome(), res.GetError())
	require.NotSame(t, changed.GetState(), res.GetState())
	want, err := structpb.NewStruct(map[string]any{"n": 1, "change": true, "changed": true})
	require.NoError(t, err)
	require.True(t, proto.Equal(want, res.GetState()), "state %v", res.GetState())
}

// The versions of an assistant whose flow is the same share its executor's replicas (an
// update of its limit, priority, config or timeout keeps them warm); a version with another
// flow, and another assistant with the same flow, start their own.
func TestReplicasAreSharedByVersionsWithTheSameFlow(t *testing.T) {
	t.Parallel()
	w, flowYAML := echoWorker(t)
	pid := func(assistant string, version int64, flowYAML string) float64 {
		t.Helper()
		s, err := structpb.NewStruct(map[string]any{"pid": true})
		require.NoError(t, err)
		res := w.execute(t.Context(), &schedulerv1.Assignment{Run: "runs/r", Epoch: 1, Assistant: assistant, AssistantVersion: version,
			Flow: flowYAML, State: s, Attempt: 1, SlotType: "cpu"}, nil)
		require.Equal(t, schedulerv1.RunResult_OUTCOME_SUCCEEDED, res.GetOutcome(), res.GetError())
		return res.GetState().GetFields()["pid"].GetNumberValue()
	}

	first := pid("assistants/a", 1, flowYAML)
	require.NotZero(t, first)
	require.Equal(t, first, pid("assistants/a", 2, flowYAML), "version 2 has the same flow: the same replica")
	require.Equal(t, first, pid("assistants/a", 1, flowYAML))
	changed := pid("assistants/a", 3, flowYAML+"    env: {MODE: other}\n")
	require.NotEqual(t, first, changed, "version 3 changed the flow: a replica of its own")
	other := pid("assistants/b", 1, flowYAML)
	require.NotEqual(t, first, other, "another assistant never shares a replica")
	require.NotEqual(t, changed, other)
}
