package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/proctest"
)

// hangPIDs waits until the hanging executor of run recorded its child and returns the
// executor's pid and the child's.
func (c *cluster) hangPIDs(run string) (executor, child int) {
	c.t.Helper()
	proctest.Eventually(c.t, 30*time.Second, run+" executor child started", func() (bool, string) {
		for _, r := range readRecords(c.t, c.records) {
			if r.Run == run && r.Phase == "child" {
				executor, child = r.PID, r.Child
				return true, ""
			}
		}
		return false, "no child record yet"
	})
	return executor, child
}

// waitGone polls until every pid is gone: no orphan is left.
func waitGone(t *testing.T, what string, pids ...int) {
	t.Helper()
	proctest.Eventually(t, 15*time.Second, what+" gone", func() (bool, string) {
		for _, pid := range pids {
			if !gone(pid) {
				return false, fmt.Sprintf("pid %d still alive", pid)
			}
		}
		return true, ""
	})
}

// Timeouts and cancels kill the executor's whole process tree: the executor and the
// `sleep 1000` it started are both gone, and the slot is free again.
func TestTimeoutAndCancelKillProcessTrees(t *testing.T) {
	c := newCluster(t)
	s := c.startScheduler()
	c.startWorker(workerOpts{slots: "cpu=2", schedulers: []*scheduler{s}})
	c.createAssistant("hang", assistantOpts{config: map[string]any{"action": "hang"}})
	// A slot type no worker has: its runs stay queued.
	c.createAssistant("nowhere", assistantOpts{slotType: "nowhere"})

	// Timeout.
	{
		input, err := structpb.NewStruct(map[string]any{})
		require.NoError(t, err)
		r, err := c.runs.CreateRun(t.Context(), &agentserverv1.CreateRunRequest{Run: &agentserverv1.Run{
			Assistant: "assistants/hang", Input: input, Timeout: durationpb.New(2 * time.Second),
		}})
		require.NoError(t, err)
		executor, child := c.hangPIDs(r.GetName())
		require.False(t, gone(executor))
		require.False(t, gone(child))
		done := c.waitRunState(r.GetName(), agentserverv1.Run_TIMED_OUT, 30*time.Second)
		require.Contains(t, done.GetError(), "timeout")
		waitGone(t, "timed-out executor and its child", executor, child)
	}

	// Cancel running.
	{
		r := c.createRun("hang", map[string]any{})
		executor, child := c.hangPIDs(r.GetName())
		got, err := c.runs.CancelRun(t.Context(), &agentserverv1.CancelRunRequest{Name: r.GetName()})
		require.NoError(t, err)
		require.Contains(t, []agentserverv1.Run_State{agentserverv1.Run_RUNNING, agentserverv1.Run_CANCELLED}, got.GetState())
		// Cancel is idempotent, also while the first one is on its way.
		_, err = c.runs.CancelRun(t.Context(), &agentserverv1.CancelRunRequest{Name: r.GetName()})
		require.NoError(t, err)
		c.waitRunState(r.GetName(), agentserverv1.Run_CANCELLED, 30*time.Second)
		waitGone(t, "cancelled executor and its child", executor, child)
		again, err := c.runs.CancelRun(t.Context(), &agentserverv1.CancelRunRequest{Name: r.GetName()})
		require.NoError(t, err)
		require.Equal(t, agentserverv1.Run_CANCELLED, again.GetState())
	}

	// Cancel queued.
	{
		r := c.createRun("nowhere", map[string]any{})
		got, err := c.runs.CancelRun(t.Context(), &agentserverv1.CancelRunRequest{Name: r.GetName()})
		require.NoError(t, err)
		require.Equal(t, agentserverv1.Run_CANCELLED, got.GetState(), "a queued run is cancelled at once")
		again, err := c.runs.CancelRun(t.Context(), &agentserverv1.CancelRunRequest{Name: r.GetName()})
		require.NoError(t, err)
		require.Equal(t, agentserverv1.Run_CANCELLED, again.GetState())
		require.Equal(t, agentserverv1.Run_CANCELLED, c.getRun(r.GetName()).GetState())
	}

	// Slots freed.
	{
		// Both slots were held by the hanging runs above; they must be free again.
		c.createAssistant("quick", assistantOpts{})
		names := c.createRuns("quick", []map[string]any{{}, {}})
		for _, n := range names {
			c.waitRunState(n, agentserverv1.Run_SUCCEEDED, 30*time.Second)
		}
	}
}
