package worker

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/agentserver/agentserver/pkg/inproc"
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
	got := dialOptions([]Option{WithDialOptions(a), WithGPUDetector(nil), WithDialOptions(b)})
	require.Len(t, got.opts, 2)
	require.Nil(t, got.conn, "sessions dial SCHEDULER_ADDR")
	require.Empty(t, dialOptions(nil).opts)

	conn := new(inproc.Channel)
	require.Same(t, conn, dialOptions([]Option{WithSchedulerConn(conn)}).conn, "sessions use the connection given")
}
