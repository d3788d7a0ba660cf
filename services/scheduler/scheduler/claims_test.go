package scheduler_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/admintest"
	"github.com/agentserver/agentserver/pkg/store"
	"github.com/agentserver/agentserver/services/scheduler/scheduler"
)

// claimsCounted reads agentserver_scheduler_claims_total for slotType: the claims that
// found runs and the empty ones, summed over every scheduler of the test binary (tests
// that read it use slot types of their own, or do not run in parallel).
func claimsCounted(t *testing.T, slotType string) (found, empty int) {
	t.Helper()
	found, empty, err := claimsOf(slotType)
	require.NoError(t, err)
	return found, empty
}

// claimsOf is claimsCounted without a test (for Eventually's own goroutine).
func claimsOf(slotType string) (found, empty int, err error) {
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return 0, 0, err
	}
	for _, f := range families {
		if f.GetName() != "agentserver_scheduler_claims_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["slot_type"] != slotType {
				continue
			}
			if labels["found"] == "true" {
				found += int(m.GetCounter().GetValue())
			} else {
				empty += int(m.GetCounter().GetValue())
			}
		}
	}
	return found, empty, nil
}

// createAssistants creates one assistant per id → slot type.
func createAssistants(t *testing.T, st *store.Store, slotTypes map[string]string) {
	t.Helper()
	for id, slotType := range slotTypes {
		_, err := st.CreateAssistant(t.Context(), &store.Assistant{TenantID: store.DefaultTenant, ID: id, SlotType: slotType, Flow: flow})
		require.NoError(t, err)
	}
}

// A queue notification names the slot type of the runs it announces; the dispatcher
// claims only for free slots of that type. Runs no worker has slots for (created one
// at a time, each its own notification) cost the worker's other slot types no claim.
func TestNotificationsClaimOnlyTheirSlotType(t *testing.T) {
	st, addr := startScheduler(t, func(c *scheduler.Config) { c.PollInterval = time.Minute })
	createAssistants(t, st, map[string]string{"mine": "cpu-notified", "other": "nobody-has-these"})
	w := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "w", Slots: slots("cpu-notified", 10)})
	waitListening(t, st)
	queueRuns(t, st, "mine", 1)
	require.Eventually(t, func() bool { return len(w.assignments()) == 1 }, 10*time.Second, 10*time.Millisecond)
	found0, empty0 := claimsCounted(t, "cpu-notified")

	for range 20 {
		queueRuns(t, st, "other", 1)
		time.Sleep(20 * time.Millisecond) // each notification its own wake-up
	}
	queueRuns(t, st, "mine", 1)
	require.Eventually(t, func() bool { return len(w.assignments()) == 2 }, 10*time.Second, 10*time.Millisecond)

	found, empty := claimsCounted(t, "cpu-notified")
	require.Equal(t, 1, found-found0, "one claim took the second run")
	require.LessOrEqual(t, empty-empty0, 2, "the 20 notifications of another slot type made no claims (a stray poll may)")
}

// One run announced to many workers with free slots costs one claim, not one per worker:
// a claim that takes fewer runs than it asked for emptied the queue of its slot type, and
// the dispatch claims no more for that type.
func TestOneClaimPerAnnouncedRunAcrossWorkers(t *testing.T) {
	st, srv, _ := runScheduler(t, func(c *scheduler.Config) { c.PollInterval = time.Minute; c.AdminAddr = "127.0.0.1:0" })
	addr := srv.Addr().String()
	createAssistants(t, st, map[string]string{"a": "cpu-fleet"})
	var workers []*standInWorker
	for _, id := range []string{"w1", "w2", "w3", "w4", "w5"} {
		workers = append(workers, connectStandIn(t, addr, &schedulerv1.Register{WorkerId: id, Slots: slots("cpu-fleet", 10)}))
	}
	waitListening(t, st)
	queueOneByOne(t, st, "a", 1, workers)
	found0, empty0 := claimsCounted(t, "cpu-fleet")

	queueOneByOne(t, st, "a", 10, workers)

	found, empty := claimsCounted(t, "cpu-fleet")
	require.Equal(t, 10, found-found0, "each run one claim")
	require.LessOrEqual(t, empty-empty0, 2, "no empty claim for the four other workers' free slots (a stray poll may)")

	// The counts are on the admin endpoint's /metrics.
	require.Contains(t, admintest.Metrics(t, srv.AdminAddr()), fmt.Sprintf(`agentserver_scheduler_claims_total{found="true",slot_type="cpu-fleet"} %d`, found))
}

// Results freeing slots the queue has nothing for cost no claim, on whichever worker of
// the fleet they arrive: every worker's last claim of the type found the queue empty, or
// was skipped because another worker's claim in the same dispatch had.
func TestResultsOnAFleetWithNothingQueuedCostNoClaim(t *testing.T) {
	st, addr := startScheduler(t, func(c *scheduler.Config) { c.PollInterval = time.Minute })
	createAssistants(t, st, map[string]string{"a": "cpu-results", "probe": "cpu-results-probe"})
	var workers []*standInWorker
	for _, id := range []string{"r1", "r2", "r3", "r4", "r5"} {
		workers = append(workers, connectStandIn(t, addr, &schedulerv1.Register{WorkerId: id, Slots: slots("cpu-results", 10)}))
	}
	probe := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "probe", Slots: slots("cpu-results-probe", 1)})
	waitListening(t, st)
	queueOneByOne(t, st, "a", 20, workers)
	// The last claim's assignment reaches its worker before that dispatch has marked every
	// session's claim: results sent meanwhile would wake one more. A run of another type,
	// claimed by a later dispatch, shows that it has ended.
	queueOneByOne(t, st, "probe", 1, []*standInWorker{probe})
	found0, empty0 := claimsCounted(t, "cpu-results")

	succeedAll(t, workers)

	found, empty := claimsCounted(t, "cpu-results")
	require.Equal(t, found0, found)
	require.LessOrEqual(t, empty-empty0, 1, "no claim woken by results whose slots nothing waits for")
}

// A dispatch woken for one slot type leaves the workers' other slot types as they were:
// their last claims emptied the queue, so results freeing their slots still cost no claim.
func TestAnotherSlotTypesRunsLeaveResultsClaimFree(t *testing.T) {
	st, addr := startScheduler(t, func(c *scheduler.Config) { c.PollInterval = time.Minute })
	createAssistants(t, st, map[string]string{"a": "cpu-mixed-a", "b": "cpu-mixed-b"})
	var workers []*standInWorker
	for _, id := range []string{"m1", "m2", "m3"} {
		workers = append(workers, connectStandIn(t, addr, &schedulerv1.Register{WorkerId: id, Slots: slots("cpu-mixed-a", 10, "cpu-mixed-b", 10)}))
	}
	waitListening(t, st)
	queueOneByOne(t, st, "a", 6, workers)
	queueOneByOne(t, st, "b", 1, workers) // a dispatch for cpu-mixed-b only, after the last of cpu-mixed-a
	found0, empty0 := claimsCounted(t, "cpu-mixed-a")

	succeedAll(t, workers)

	found, empty := claimsCounted(t, "cpu-mixed-a")
	require.Equal(t, found0, found)
	require.Equal(t, empty0, empty, "no claim of cpu-mixed-a woken by its results after a dispatch for cpu-mixed-b")
}

// fleetAssignments returns every assignment the workers have received.
func fleetAssignments(workers []*standInWorker) []*schedulerv1.Assignment {
	var out []*schedulerv1.Assignment
	for _, w := range workers {
		out = append(out, w.assignments()...)
	}
	return out
}

// queueOneByOne queues n runs of assistant one at a time, each after the one before
// reached one of the workers.
func queueOneByOne(t *testing.T, st *store.Store, assistant string, n int, workers []*standInWorker) {
	t.Helper()
	before := len(fleetAssignments(workers))
	for i := range n {
		queueRuns(t, st, assistant, 1)
		require.Eventually(t, func() bool { return len(fleetAssignments(workers)) == before+i+1 }, 10*time.Second, time.Millisecond)
	}
}

// succeedAll sends the success of every assignment the workers hold, one at a time, each
// after the one before was acknowledged.
func succeedAll(t *testing.T, workers []*standInWorker) {
	t.Helper()
	acked := func() int {
		n := 0
		for _, w := range workers {
			runs, _ := w.acked()
			n += len(runs)
		}
		return n
	}
	want := acked()
	for _, w := range workers {
		for _, a := range w.assignments() {
			w.succeed(t, a)
			want++
			require.Eventually(t, func() bool { return acked() == want }, 10*time.Second, time.Millisecond)
		}
	}
}

// Every GPU is its own claim, largest free memory first; a claim that finds no run for a
// GPU finds none for a GPU with less free memory either, here or on another worker, so a
// wake-up with no GPU run queued costs one GPU claim, not one per free GPU. A run that
// needs more memory than the first GPUs have is still placed on a larger one.
func TestGPUClaimsStopAtTheFirstEmptyOne(t *testing.T) {
	st, addr := startScheduler(t, func(c *scheduler.Config) { c.PollInterval = 50 * time.Millisecond })
	ctx := t.Context()
	createAssistants(t, st, map[string]string{"c": "cpu-beside-gpus"})
	_, err := st.CreateAssistant(ctx, &store.Assistant{TenantID: store.DefaultTenant, ID: "big", SlotType: "gpu", Flow: flow, GPUMemoryBytes: 40 * gib})
	require.NoError(t, err)
	gpus := func(prefix string, n int, total int64) []*agentserverv1.Gpu {
		var out []*agentserverv1.Gpu
		for i := range n {
			out = append(out, &agentserverv1.Gpu{Index: int32(i), Uuid: prefix + string(rune('0'+i)), MemoryTotalBytes: total})
		}
		return out
	}
	small := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "small", Slots: slots("cpu-beside-gpus", 1, "gpu", 4), Gpus: gpus("GPU-small-", 4, 16*gib)})
	large := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "large", Slots: slots("gpu", 1), Gpus: gpus("GPU-large-", 1, 80*gib)})

	// Polls every 50 ms claim for every slot type: one claim for the cpu slot, and for the
	// five free GPUs of the two workers one or two claims each poll (two when the dispatch
	// visits the small worker first: its largest GPU, then the larger one), not five.
	// (The two counts are read apart: a dispatch between the reads makes them differ by
	// one poll at most.)
	time.Sleep(200 * time.Millisecond)
	cpu0, cpuEmpty0 := claimsCounted(t, "cpu-beside-gpus")
	gpu0, gpuEmpty0 := claimsCounted(t, "gpu")
	require.Eventually(t, func() bool {
		_, empty, err := claimsOf("cpu-beside-gpus")
		return err == nil && empty-cpuEmpty0 >= 10
	}, 30*time.Second, 10*time.Millisecond, "ten polls")
	cpu, cpuEmpty := claimsCounted(t, "cpu-beside-gpus")
	gpu, gpuEmpty := claimsCounted(t, "gpu")
	require.Zero(t, cpu-cpu0)
	require.Zero(t, gpu-gpu0)
	polls := cpuEmpty - cpuEmpty0
	require.LessOrEqual(t, gpuEmpty-gpuEmpty0, 2*polls+2, "at most one empty GPU claim per worker and poll")

	// A 40Gi run fits no 16Gi GPU: whichever worker the dispatch visits first, it lands on
	// the 80Gi GPU.
	queueRuns(t, st, "big", 1)
	require.Eventually(t, func() bool { return len(large.assignments()) == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, "GPU-large-0", large.assignments()[0].GetGpuUuid())
	require.Empty(t, small.assignments())
}
