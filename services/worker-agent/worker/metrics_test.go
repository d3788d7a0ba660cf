package worker

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/pkg/admintest"
)

// The worker's admin /metrics reports its own slots by type: total, and used while a run
// executes, freed when it ends.
func TestMetricsReportTheWorkersSlots(t *testing.T) {
	t.Parallel()
	release := filepath.Join(t.TempDir(), "release")
	s := &standInScheduler{features: []string{featureResultAcks, featureResultEvents}}
	w := runWorkerWith(t, s, time.Hour, release, func(c *Config) { c.AdminAddr = "127.0.0.1:0" }, "runs/a")
	used := func(n string) func() bool {
		return func() bool {
			body := admintest.Metrics(t, w.admin.Addr())
			return containsLine(body, `agentserver_worker_slots{slot_type="cpu",state="used"} `+n)
		}
	}
	require.Eventually(t, used("1"), 30*time.Second, 10*time.Millisecond, "the run holds a slot while it executes")
	body := admintest.Metrics(t, w.admin.Addr())
	require.True(t, containsLine(body, `agentserver_worker_slots{slot_type="cpu",state="total"} 2`), body)
	require.True(t, containsLine(body, `agentserver_worker_draining 0`), body)

	require.NoError(t, os.WriteFile(release, nil, 0o644))
	require.Eventually(t, used("0"), 30*time.Second, 10*time.Millisecond, "its slot is freed when it ends")
	s.respond(t, &schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_ResultAcks{ResultAcks: &schedulerv1.ResultAcks{Acks: []*schedulerv1.ResultAck{{Run: "runs/a", Epoch: 3}}}}})
	require.Eventually(t, func() bool { return w.unackedCount() == 0 }, 10*time.Second, 5*time.Millisecond)
}

// containsLine reports whether text has line as a whole line.
func containsLine(text, line string) bool {
	return slices.Contains(strings.Split(text, "\n"), line)
}
