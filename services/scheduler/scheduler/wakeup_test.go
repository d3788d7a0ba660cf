package scheduler_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/pkg/store"
	"github.com/agentserver/agentserver/services/scheduler/scheduler"
)

// Lifting or raising an assistant's concurrency limit wakes the scheduler at once: the runs
// the limit held are claimed then, not at the next poll (a minute here), although nothing
// else happens that would wake it (no enqueue, no result).
func TestLiftedLimitWakesTheScheduler(t *testing.T) {
	st, addr := startScheduler(t, func(c *scheduler.Config) { c.PollInterval = time.Minute })
	ctx := t.Context()
	_, err := st.CreateAssistant(ctx, &store.Assistant{TenantID: store.DefaultTenant, ID: "a", SlotType: "cpu", Flow: flow, ConcurrencyLimit: 1})
	require.NoError(t, err)
	queueRuns(t, st, "a", 6)

	w := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "w", Slots: slots("cpu", 10)})
	require.Eventually(t, func() bool { return len(w.assignments()) == 1 }, 10*time.Second, 10*time.Millisecond, "limit 1: one run")
	setLimit := func(limit int32) {
		_, err := st.UpdateAssistant(ctx, store.DefaultTenant, "a", func(a *store.Assistant) error {
			a.ConcurrencyLimit = limit
			return nil
		})
		require.NoError(t, err)
	}

	setLimit(3)
	require.Eventually(t, func() bool { return len(w.assignments()) == 3 }, 10*time.Second, 10*time.Millisecond, "raised to 3")
	setLimit(0)
	require.Eventually(t, func() bool { return len(w.assignments()) == 6 }, 10*time.Second, 10*time.Millisecond, "lifted")
}
