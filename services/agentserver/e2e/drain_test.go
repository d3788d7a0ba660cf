package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/proctest"
	"github.com/agentserver/agentserver/pkg/store"
)

// waitStarted waits until every run has a start record from worker pid ppid (any worker
// when ppid is 0).
func (c *cluster) waitStarted(names []string, ppid int) {
	c.t.Helper()
	proctest.Eventually(c.t, 30*time.Second, "runs started", func() (bool, string) {
		started := map[string]bool{}
		for _, r := range readRecords(c.t, c.records) {
			if r.Phase == "start" && (ppid == 0 || r.PPID == ppid) {
				started[r.Run] = true
			}
		}
		for _, n := range names {
			if !started[n] {
				return false, n + " not started"
			}
		}
		return true, ""
	})
}

// Drain: SIGTERM makes a worker take no new work, let its runs finish within
// WORKER_DRAIN_GRACE, hand the rest back to the queue (no attempt used) and exit 0.
func TestDrain(t *testing.T) {
	t.Run("grace shorter than the runs", func(t *testing.T) {
		c := newCluster(t)
		s := c.startScheduler()
		c.createAssistant("long", assistantOpts{})
		draining := c.startWorker(workerOpts{slots: "cpu=2", schedulers: []*scheduler{s}, drainGrace: 500 * time.Millisecond})
		names := c.createRuns("long", []map[string]any{{"ms": 4000}, {"ms": 4000}})
		c.waitStarted(names, draining.Pid())
		other := c.startWorker(workerOpts{slots: "cpu=2", schedulers: []*scheduler{s}})

		draining.Signal(syscall.SIGTERM)
		st := draining.Wait(30 * time.Second)
		require.Equal(t, 0, st.ExitCode(), "a drained worker exits 0")

		for _, n := range names {
			r := c.waitRunState(n, agentserverv1.Run_SUCCEEDED, 30*time.Second)
			require.Equal(t, "workers/"+other.id, r.GetWorker(), "completed elsewhere")
			require.EqualValues(t, 1, r.GetAttempt(), "handing a run back uses no attempt")
			require.EqualValues(t, other.Pid(), r.GetOutput().AsMap()["worker_pid"])
			require.EqualValues(t, 1, r.GetOutput().AsMap()["attempt"])
			queued := 0 // created, then handed back
			for _, e := range c.events(n) {
				if e.Type == "state" && e.Data["state"] == "QUEUED" {
					queued++
				}
				require.NotEqual(t, "lease_expired", e.Data["reason"], "handed back, not left to expire")
			}
			require.Equal(t, 2, queued, "run %s was handed back to the queue once", n)
		}
		for _, rec := range readRecords(t, c.records) {
			if rec.PPID == draining.Pid() {
				require.NotEqual(t, "done", rec.Phase, "the drained worker finished no run")
			}
		}
	})

	t.Run("grace longer than the runs", func(t *testing.T) {
		c := newCluster(t)
		s := c.startScheduler()
		c.createAssistant("short", assistantOpts{})
		draining := c.startWorker(workerOpts{slots: "cpu=4", schedulers: []*scheduler{s}, drainGrace: 30 * time.Second})
		first := c.createRuns("short", []map[string]any{{"ms": 2000}, {"ms": 2000}})
		c.waitStarted(first, draining.Pid())

		draining.Signal(syscall.SIGTERM)
		proctest.Eventually(t, 10*time.Second, "worker draining", func() (bool, string) {
			_, state := c.workerScheduler(draining.id)
			return state == store.WorkerDraining, "not draining yet"
		})
		// Work submitted while it drains is not for it, though it has 2 free slots.
		later := c.createRuns("short", []map[string]any{{"ms": 10}, {"ms": 10}})

		st := draining.Wait(30 * time.Second)
		require.Equal(t, 0, st.ExitCode(), "a drained worker exits 0")
		for _, n := range first {
			r := c.getRun(n)
			require.Equal(t, agentserverv1.Run_SUCCEEDED, r.GetState(), "finished within the grace")
			require.Equal(t, "workers/"+draining.id, r.GetWorker())
			require.EqualValues(t, draining.Pid(), r.GetOutput().AsMap()["worker_pid"])
		}
		for _, n := range later {
			require.Equal(t, agentserverv1.Run_QUEUED, c.getRun(n).GetState(), "the draining worker took no new run")
		}

		other := c.startWorker(workerOpts{slots: "cpu=2", schedulers: []*scheduler{s}})
		for _, n := range later {
			r := c.waitRunState(n, agentserverv1.Run_SUCCEEDED, 30*time.Second)
			require.Equal(t, "workers/"+other.id, r.GetWorker())
		}
		for _, rec := range readRecords(t, c.records) {
			for _, n := range later {
				require.False(t, rec.Run == n && rec.PPID == draining.Pid(), "the draining worker executed a new run")
			}
		}
	})
}
