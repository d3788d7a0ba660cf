package worker

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
)

func TestSchedulerTargets(t *testing.T) {
	t.Parallel()
	require.Equal(t, []string{"a:1", "b:2"}, schedulerTargets(" a:1, ,b:2 "))
	require.Equal(t, []string{"consul:///agentserver-scheduler"}, schedulerTargets("consul:///agentserver-scheduler"))
	require.Equal(t, []string{"static:///a:1,b:2"}, schedulerTargets("static:///a:1,b:2"), "one resolver target, not split")
	require.Empty(t, schedulerTargets(" "))
}

func TestWithDialOptions(t *testing.T) {
	t.Parallel()
	a, b := grpc.WithUserAgent("a"), grpc.WithUserAgent("b")
	require.Len(t, dialOptions([]Option{WithDialOptions(a), WithGPUDetector(nil), WithDialOptions(b)}), 2)
	require.Empty(t, dialOptions(nil))
}
