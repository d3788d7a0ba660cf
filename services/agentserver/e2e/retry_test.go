package e2e

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/proctest"
)

// Retries: an executor that fails with retryable errors on attempts 1 and 2 succeeds on
// attempt 3 when the assistant allows 3 attempts, with the backoff visible on the run
// (next_attempt_time) while it waits; with 2 attempts allowed the run fails.
func TestRetries(t *testing.T) {
	c := newCluster(t)
	// A base delay long enough to watch the run wait between attempts.
	s := c.startScheduler("SCHEDULER_RETRY_BASE_DELAY=1s")
	c.startWorker(workerOpts{slots: "cpu=2", schedulers: []*scheduler{s}})
	c.createAssistant("three", assistantOpts{maxAttempts: 3})
	c.createAssistant("two", assistantOpts{maxAttempts: 2})
	flaky := map[string]any{"action": "flaky", "succeed_at": 3}

	// Succeeds on the third attempt.
	{
		r := c.createRun("three", flaky)
		require.EqualValues(t, 3, r.GetMaxAttempts())
		// Waiting for attempt 2: queued, with the time of the next attempt in the future.
		var waiting *agentserverv1.Run
		proctest.Eventually(t, 30*time.Second, "run waiting for attempt 2", func() (bool, string) {
			waiting = c.getRun(r.GetName())
			return waiting.GetState() == agentserverv1.Run_QUEUED && waiting.GetAttempt() == 2, waiting.GetState().String()
		})
		require.NotNil(t, waiting.GetNextAttemptTime(), "the backoff is visible on the run")
		require.True(t, waiting.GetNextAttemptTime().AsTime().After(waiting.GetCreateTime().AsTime()))
		require.Contains(t, waiting.GetError(), "flaky failure at attempt 1")

		done := c.waitRunState(r.GetName(), agentserverv1.Run_SUCCEEDED, 30*time.Second)
		require.EqualValues(t, 3, done.GetAttempt())
		require.EqualValues(t, 3, done.GetOutput().AsMap()["attempt"], "the executor saw attempt 3")
		require.Nil(t, done.GetNextAttemptTime())

		var attempts []int32
		for _, rec := range readRecords(t, c.records) {
			if rec.Run == r.GetName() && rec.Phase == "start" {
				attempts = append(attempts, rec.Attempt)
			}
		}
		require.Equal(t, []int32{1, 2, 3}, attempts, "one execution per attempt")
	}

	// Fails when attempts run out.
	{
		r := c.createRun("two", flaky)
		done := c.waitRunState(r.GetName(), agentserverv1.Run_FAILED, 30*time.Second)
		require.EqualValues(t, 2, done.GetAttempt())
		require.Contains(t, done.GetError(), "flaky failure at attempt 2")
	}
}
