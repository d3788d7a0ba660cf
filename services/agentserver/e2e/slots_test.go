package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/store"
)

// Backpressure: 2,000 runs queued at once against one worker with 4 cpu slots. None is
// rejected or lost, each is executed exactly once, and the executors' own records never
// show more than 4 executions at a time.
func TestBackpressure(t *testing.T) {
	c := newCluster(t)
	s := c.startScheduler()
	w := c.startWorker(workerOpts{slots: "cpu=4", schedulers: []*scheduler{s}})
	c.createAssistant("fast", assistantOpts{config: map[string]any{"ms": 1}})

	const n = 2000
	inputs := make([]map[string]any, n)
	for i := range inputs {
		inputs[i] = map[string]any{"i": i}
	}
	names := c.createRuns("fast", inputs)
	require.Len(t, names, n, "every run was accepted")

	c.waitAllTerminal(90 * time.Second)
	runs := c.dbRuns()
	execs := executions(readRecords(t, c.records))
	list := finished(t, execs)
	for _, name := range names {
		r := runs[name]
		require.Equal(t, store.StateSucceeded, r.state, "run %s", name)
		require.Equal(t, w.id, r.worker)
		e := execs[claimKey{name, r.epoch}]
		require.NotNil(t, e, "run %s has no execution under its accepted epoch %d", name, r.epoch)
		require.Equal(t, 1, e.starts, "run %s started once", name)
		require.Equal(t, 1, e.dones, "run %s done once", name)
	}
	require.Len(t, execs, n, "one execution per run, no other")
	peak := maxOverlap(list)
	require.LessOrEqual(t, peak, 4, "never more executions at once than the worker's slots")
	t.Logf("backpressure: %d runs, %d executions, max concurrency observed %d (slots 4)", n, len(execs), peak)
}

// Typed slots across processes: runs of an assistant needing a "tpu" slot only ever run
// on the worker that has one, one at a time; cpu runs may run on both workers. A custom
// type stands for gpu so the test needs no GPU.
func TestTypedSlots(t *testing.T) {
	c := newCluster(t)
	s := c.startScheduler()
	cpuOnly := c.startWorker(workerOpts{slots: "cpu=2", schedulers: []*scheduler{s}})
	tpu := c.startWorker(workerOpts{slots: "cpu=1,tpu=1", schedulers: []*scheduler{s}})
	c.createAssistant("on-tpu", assistantOpts{slotType: "tpu", config: map[string]any{"ms": 50}})
	c.createAssistant("on-cpu", assistantOpts{config: map[string]any{"ms": 50}})

	var tpuInputs, cpuInputs []map[string]any
	for i := range 12 {
		tpuInputs = append(tpuInputs, map[string]any{"i": i})
	}
	for i := range 24 {
		cpuInputs = append(cpuInputs, map[string]any{"i": i})
	}
	tpuRuns := c.createRuns("on-tpu", tpuInputs)
	cpuRuns := c.createRuns("on-cpu", cpuInputs)
	c.waitAllTerminal(60 * time.Second)

	runs := c.dbRuns()
	execs := executions(readRecords(t, c.records))
	finished(t, execs)
	var onTPU []*execution
	for _, name := range tpuRuns {
		r := runs[name]
		require.Equal(t, store.StateSucceeded, r.state, "run %s", name)
		require.Equal(t, tpu.id, r.worker, "a tpu run was placed on %s", r.worker)
		e := execs[claimKey{name, r.epoch}]
		require.NotNil(t, e)
		require.Equal(t, tpu.Pid(), e.worker, "a tpu run was executed by worker pid %d", e.worker)
		onTPU = append(onTPU, e)
	}
	require.Equal(t, 1, maxOverlap(onTPU), "one tpu slot: tpu runs one at a time")
	usedCPU := map[string]int{}
	for _, name := range cpuRuns {
		r := runs[name]
		require.Equal(t, store.StateSucceeded, r.state, "run %s", name)
		usedCPU[r.worker]++
	}
	for _, e := range execs {
		require.Equal(t, 1, e.starts)
	}
	byWorker := map[int][]*execution{}
	for _, e := range execs {
		byWorker[e.worker] = append(byWorker[e.worker], e)
	}
	require.LessOrEqual(t, maxOverlap(byWorker[cpuOnly.Pid()]), 2, "cpu-only worker: 2 slots")
	require.LessOrEqual(t, maxOverlap(byWorker[tpu.Pid()]), 2, "tpu worker: 1 cpu + 1 tpu slot")
	t.Logf("typed slots: tpu runs all on %s; cpu runs by worker: %v", tpu.id, fmt.Sprint(usedCPU))
}
