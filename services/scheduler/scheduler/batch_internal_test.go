package scheduler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
)

func resultMsg() *schedulerv1.ConnectRequest {
	return &schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Result{Result: &schedulerv1.RunResult{}}}
}

func eventMsg() *schedulerv1.ConnectRequest {
	return &schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Event{Event: &schedulerv1.RunEvent{}}}
}

func checkpointMsg() *schedulerv1.ConnectRequest {
	return &schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Checkpoint{Checkpoint: &schedulerv1.Checkpoint{}}}
}

func queued(ms ...*schedulerv1.ConnectRequest) chan *schedulerv1.ConnectRequest {
	in := make(chan *schedulerv1.ConnectRequest, 2*maxMessageBatch)
	for _, m := range ms {
		in <- m
	}
	return in
}

// A small batch of results waits for more only under load (the previous batch held
// lingerAfter messages or more), for at most the linger, and never for a checkpoint or a
// heartbeat.
func TestNextBatchLingersOnlyUnderLoad(t *testing.T) {
	t.Parallel()
	const long = time.Hour // a wait that must not happen would fail the test by its timeout

	// Low load (previous batch of one) or lingering off: what is queued, at once.
	for _, tc := range []struct {
		linger   time.Duration
		previous int
	}{{long, 0}, {long, 1}, {long, lingerAfter - 1}, {0, lingerAfter}} {
		in := queued(resultMsg())
		require.Len(t, nextBatch(in, resultMsg(), tc.linger, tc.previous), 2, "linger %s previous %d", tc.linger, tc.previous)
	}

	// Under load: waits for the linger, taking the results that come meanwhile.
	in := queued(eventMsg())
	go func() {
		time.Sleep(20 * time.Millisecond)
		in <- resultMsg()
	}()
	began := time.Now()
	batch := nextBatch(in, resultMsg(), time.Second, lingerAfter)
	require.GreaterOrEqual(t, time.Since(began), time.Second)
	require.Len(t, batch, 3)

	// ... and stops as soon as it has lingerBatch messages.
	in = queued()
	go func() {
		for range lingerBatch - 1 {
			in <- resultMsg()
		}
	}()
	require.Len(t, nextBatch(in, resultMsg(), long, lingerAfter), lingerBatch)

	// A full batch does not wait.
	in = queued()
	for range lingerBatch {
		in <- resultMsg()
	}
	require.Len(t, nextBatch(in, resultMsg(), long, lingerAfter), lingerBatch+1)

	// A checkpoint, queued or arriving, ends the wait (its step waits for the answer); so
	// does the end of the stream.
	require.Len(t, nextBatch(queued(checkpointMsg()), resultMsg(), long, lingerAfter), 2)
	require.Len(t, nextBatch(queued(), checkpointMsg(), long, lingerAfter), 1)
	in = queued()
	go func() {
		time.Sleep(20 * time.Millisecond)
		in <- checkpointMsg()
	}()
	require.Len(t, nextBatch(in, resultMsg(), long, lingerAfter), 2)
	in = queued(resultMsg())
	close(in)
	require.Len(t, nextBatch(in, resultMsg(), long, lingerAfter), 2)
}

func TestResultLingerIsValidated(t *testing.T) {
	t.Parallel()
	for linger, ok := range map[time.Duration]bool{0: true, 2 * time.Millisecond: true, maxResultLinger: true, -time.Millisecond: false, maxResultLinger + 1: false} {
		c := Defaults()
		c.ResultLinger = linger
		if ok {
			require.NoError(t, c.Validate(), "linger %s", linger)
		} else {
			require.ErrorContains(t, c.Validate(), "result linger", "linger %s", linger)
		}
	}
}
