package scheduler

import (
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
)

// eventData gives every event its data as the worker sent it; the step_started events of
// a step share one map.
func TestEventDataIsTheEventsData(t *testing.T) {
	event := func(typ string, data map[string]any) *schedulerv1.RunEvent {
		s, err := structpb.NewStruct(data)
		require.NoError(t, err)
		return &schedulerv1.RunEvent{Type: typ, Data: s}
	}
	for _, tc := range []struct {
		name string
		ev   *schedulerv1.RunEvent
		want map[string]any
	}{
		{"step_started", event("step_started", map[string]any{"step": "fetch"}), map[string]any{"step": "fetch"}},
		{"step_started with more data", event("step_started", map[string]any{"step": "fetch", "n": 1.0}), map[string]any{"step": "fetch", "n": 1.0}},
		{"step_started whose step is not a string", event("step_started", map[string]any{"step": 2.0}), map[string]any{"step": 2.0}},
		{"step_started with other data", event("step_started", map[string]any{"name": "fetch"}), map[string]any{"name": "fetch"}},
		{"another type", event("log", map[string]any{"step": "fetch"}), map[string]any{"step": "fetch"}},
		{"no data", &schedulerv1.RunEvent{Type: "step_started"}, map[string]any{}},
	} {
		require.Equal(t, tc.want, eventData(tc.ev), tc.name)
	}
	a := eventData(event("step_started", map[string]any{"step": "shared"}))
	b := eventData(event("step_started", map[string]any{"step": "shared"}))
	require.Equal(t, reflect.ValueOf(a).UnsafePointer(), reflect.ValueOf(b).UnsafePointer(),
		"the step_started events of one step share their data")
}
