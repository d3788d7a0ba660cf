package scheduler

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/pkg/store"
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

// noRelease stands for session.release where a test does not look at it.
func noRelease([]*schedulerv1.ConnectRequest) {}

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
		require.Len(t, nextBatch(in, resultMsg(), tc.linger, tc.previous, noRelease), 2, "linger %s previous %d", tc.linger, tc.previous)
	}

	// Under load: waits for the linger, taking the results that come meanwhile.
	in := queued(eventMsg())
	go func() {
		time.Sleep(20 * time.Millisecond)
		in <- resultMsg()
	}()
	began := time.Now()
	batch := nextBatch(in, resultMsg(), time.Second, lingerAfter, noRelease)
	require.GreaterOrEqual(t, time.Since(began), time.Second)
	require.Len(t, batch, 3)

	// ... past lingerBatch, and stops as soon as it has lingerFill messages.
	in = queued()
	go func() {
		for range lingerFill - 1 {
			in <- resultMsg()
		}
	}()
	require.Len(t, nextBatch(in, resultMsg(), long, lingerAfter, noRelease), lingerFill)

	// A batch of lingerBatch messages at once does not wait.
	in = queued()
	for range lingerBatch - 1 {
		in <- resultMsg()
	}
	go func(in chan<- *schedulerv1.ConnectRequest) {
		time.Sleep(20 * time.Millisecond)
		in <- resultMsg() // not waited for
	}(in)
	require.Len(t, nextBatch(in, resultMsg(), long, lingerAfter, noRelease), lingerBatch)

	// A checkpoint, queued or arriving, ends the wait (its step waits for the answer); so
	// does the end of the stream.
	require.Len(t, nextBatch(queued(checkpointMsg()), resultMsg(), long, lingerAfter, noRelease), 2)
	require.Len(t, nextBatch(queued(), checkpointMsg(), long, lingerAfter, noRelease), 1)
	in = queued()
	go func() {
		time.Sleep(20 * time.Millisecond)
		in <- checkpointMsg()
	}()
	require.Len(t, nextBatch(in, resultMsg(), long, lingerAfter, noRelease), 2)
	in = queued(resultMsg())
	close(in)
	require.Len(t, nextBatch(in, resultMsg(), long, lingerAfter, noRelease), 2)
}

// A batch that lingers frees its results' slots first, and those of the results that
// arrive during the wait as they arrive; a batch that does not linger leaves that to
// handleResults.
func TestLingeringBatchReleasesSlotsFirst(t *testing.T) {
	t.Parallel()
	var released [][]*schedulerv1.ConnectRequest
	record := func(ms []*schedulerv1.ConnectRequest) { released = append(released, ms) }

	require.Len(t, nextBatch(queued(resultMsg()), resultMsg(), time.Hour, 1, record), 2)
	require.Empty(t, released, "no linger at low load, nothing released early")

	first, queuedResult, late := resultMsg(), resultMsg(), resultMsg()
	in := queued(queuedResult)
	arrived := make(chan struct{})
	go func() {
		<-arrived
		in <- late
	}()
	batch := nextBatch(in, first, 200*time.Millisecond, lingerAfter, func(ms []*schedulerv1.ConnectRequest) {
		record(ms)
		if len(released) == 1 {
			close(arrived) // the late result comes only once the first two are released
		}
	})
	require.Equal(t, []*schedulerv1.ConnectRequest{first, queuedResult, late}, batch)
	require.Len(t, released, 2)
	require.Equal(t, []*schedulerv1.ConnectRequest{first, queuedResult}, released[0], "released before the wait")
	require.Equal(t, []*schedulerv1.ConnectRequest{late}, released[1], "released on arrival")
}

// release frees the slot and GPU of a claim whose result arrived, once, and only for the
// claim's own epoch; handleResults still finds the entry (its attempt sets the retry
// delay). It wakes the dispatcher unless the last claim of the slot's type for this
// worker emptied the queue, and for every GPU.
func TestReleaseFreesSlotsOfArrivedResults(t *testing.T) {
	t.Parallel()
	a, b, g := uuid.New(), uuid.New(), uuid.New()
	sess := &session{
		srv:   &Server{wake: make(chan struct{}, 1)},
		slots: map[string]int32{"cpu": 2, "gpu": 1},
		gpus:  []store.GPU{{UUID: "GPU-0"}},
		runs: map[uuid.UUID]*inflight{
			a: {epoch: 3, slotType: "cpu", attempt: 2},
			b: {epoch: 1, slotType: "cpu"},
			g: {epoch: 1, slotType: "gpu", gpu: "GPU-0"},
		},
		spare: map[string]bool{},
	}
	result := func(id uuid.UUID, epoch int64) *schedulerv1.ConnectRequest {
		return &schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Result{Result: &schedulerv1.RunResult{Run: runName(id), Epoch: epoch}}}
	}
	require.Empty(t, sess.freeSlots(nil))

	sess.release([]*schedulerv1.ConnectRequest{result(a, 2), eventMsg(), {Msg: &schedulerv1.ConnectRequest_Result{Result: &schedulerv1.RunResult{Run: "bad"}}}})
	require.Empty(t, sess.freeSlots(nil), "another claim's result frees nothing")
	require.Empty(t, sess.srv.wake, "nothing freed, the dispatcher is not woken")

	sess.claimed("cpu", 1, 1)
	sess.release([]*schedulerv1.ConnectRequest{result(a, 3)})
	require.Equal(t, map[string]int{"cpu": 1}, sess.freeSlots(nil))
	require.Len(t, sess.srv.wake, 1, "the last cpu claim took all it asked for: runs may be waiting, the dispatcher is woken")
	require.Equal(t, int32(2), sess.runs[a].attempt, "the entry stays for handleResults")

	<-sess.srv.wake
	sess.release([]*schedulerv1.ConnectRequest{result(a, 3)})
	require.Equal(t, map[string]int{"cpu": 1}, sess.freeSlots(nil), "released once")
	require.Empty(t, sess.srv.wake)

	sess.claimed("cpu", 1, 0)
	sess.release([]*schedulerv1.ConnectRequest{result(b, 1)})
	require.Equal(t, map[string]int{"cpu": 2}, sess.freeSlots(nil))
	require.Empty(t, sess.srv.wake, "the last cpu claim emptied the queue: no wake-up")

	sess.claimed("gpu", 1, 0)
	sess.release([]*schedulerv1.ConnectRequest{result(g, 1)})
	require.Equal(t, map[string]int{"cpu": 2, "gpu": 1}, sess.freeSlots(nil))
	require.Len(t, sess.srv.wake, 1, "a freed GPU always wakes the dispatcher")
}

// Once the dispatcher has read a worker's free slots to claim for them, a freed slot wakes
// it whatever the claim before found: the claims that follow count the slot taken.
func TestSlotsFreedAfterTheDispatcherReadsThemWakeIt(t *testing.T) {
	t.Parallel()
	a := uuid.New()
	sess := &session{
		srv:   &Server{wake: make(chan struct{}, 1)},
		slots: map[string]int32{"cpu": 2},
		runs:  map[uuid.UUID]*inflight{a: {epoch: 1, slotType: "cpu"}},
		spare: map[string]bool{},
	}
	sess.claimed("cpu", 2, 1) // an earlier claim emptied the queue
	require.Equal(t, map[string]int{"cpu": 1}, sess.freeSlots(nil))
	sess.release([]*schedulerv1.ConnectRequest{{Msg: &schedulerv1.ConnectRequest_Result{Result: &schedulerv1.RunResult{Run: runName(a), Epoch: 1}}}})
	require.Len(t, sess.srv.wake, 1)
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
