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

// A run whose executor hands its state back unchanged ends with the assignment's own state
// (no second conversion); a changed state is converted.
func TestUnchangedStateIsTheAssignments(t *testing.T) {
	t.Parallel()
	script, err := filepath.Abs(filepath.Join(testdata, "echo_executor.py"))
	require.NoError(t, err)
	w := newStandInWorker(t, &standInScheduler{}, "cpu=1")
	t.Cleanup(func() { w.exec.Close() })
	assignment := func(run string, state map[string]any) *schedulerv1.Assignment {
		s, err := structpb.NewStruct(state)
		require.NoError(t, err)
		return &schedulerv1.Assignment{Run: run, Epoch: 1, Assistant: "assistants/echo", AssistantVersion: 1,
			Flow: fmt.Sprintf("executors:\n  - name: echo\n    command: [python3, %q]\n", script), State: s, Attempt: 1, SlotType: "cpu"}
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
