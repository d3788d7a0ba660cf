package scheduler_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/pkg/admintest"
	"github.com/agentserver/agentserver/services/scheduler/scheduler"
)

// The admin endpoint's /metrics reports the queue's depth and the running runs by slot
// type, and each pool's workers and slots, as the database has them at the scrape.
func TestMetricsReportQueueDepthRunningRunsAndSlots(t *testing.T) {
	st, srv, _ := runScheduler(t, func(c *scheduler.Config) { c.AdminAddr = "127.0.0.1:0" })
	createAssistants(t, st, map[string]string{"busy": "cpu-metrics", "stuck": "nobody-has-these"})
	body := admintest.Metrics(t, srv.AdminAddr())
	require.NotContains(t, body, "agentserver_runs{", "nothing queued or running yet")
	require.Contains(t, body, "go_goroutines", "the process's default metrics are served too")

	w := connectStandIn(t, srv.Addr().String(), &schedulerv1.Register{WorkerId: "w", Pool: "metrics-pool", Slots: slots("cpu-metrics", 4)})
	queueRuns(t, st, "stuck", 3)
	queueRuns(t, st, "busy", 2)
	require.Eventually(t, func() bool { return len(w.assignments()) == 2 }, 10*time.Second, 10*time.Millisecond)

	body = admintest.Metrics(t, srv.AdminAddr())
	for _, line := range []string{
		`agentserver_runs{slot_type="nobody-has-these",state="queued"} 3`,
		`agentserver_runs{slot_type="nobody-has-these",state="running"} 0`,
		`agentserver_runs{slot_type="cpu-metrics",state="queued"} 0`,
		`agentserver_runs{slot_type="cpu-metrics",state="running"} 2`,
		`agentserver_pool_workers{pool="metrics-pool",state="ready"} 1`,
		`agentserver_pool_workers{pool="metrics-pool",state="draining"} 0`,
		`agentserver_pool_slots{pool="metrics-pool",slot_type="cpu-metrics",state="total"} 4`,
	} {
		require.Contains(t, body, line+"\n")
	}
	require.Contains(t, body, `agentserver_pool_slots{pool="metrics-pool",slot_type="cpu-metrics",state="used"}`)
}

// A scrape while the database cannot be read still answers: the cluster's figures are
// left out and the process's own metrics served.
func TestMetricsWithoutTheDatabase(t *testing.T) {
	st, srv, _ := runScheduler(t, func(c *scheduler.Config) { c.AdminAddr = "127.0.0.1:0" })
	createAssistants(t, st, map[string]string{"stuck": "nobody-has-these-either"})
	queueRuns(t, st, "stuck", 1)
	require.Contains(t, admintest.Metrics(t, srv.AdminAddr()), `agentserver_runs{slot_type="nobody-has-these-either",state="queued"} 1`)
	st.Close()
	body := admintest.Metrics(t, srv.AdminAddr())
	require.NotContains(t, body, "agentserver_runs{")
	require.Contains(t, body, "go_goroutines")
}
