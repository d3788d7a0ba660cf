package worker

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/services/worker-agent/internal/gpu"
)

// realGPUEnv names the variable that turns TestOnRealGPU on.
const realGPUEnv = "AGENTSERVER_TEST_REAL_GPU"

// TestOnRealGPU checks the worker's GPU wiring against NVIDIA's own driver, library and
// nvidia-smi, and a real CUDA program as the executor. It runs only where
// AGENTSERVER_TEST_REAL_GPU=1 (a machine with at least one NVIDIA GPU, python3 and PyTorch);
// elsewhere the recorded-output tests (internal/gpu, TestGPURunsGetTheirOwnGPU) cover the
// same code. The executor is testdata/cuda_executor.py.
func TestOnRealGPU(t *testing.T) {
	if os.Getenv(realGPUEnv) != "1" {
		t.Skip(realGPUEnv + "=1 runs this test on a machine with an NVIDIA GPU, python3 and PyTorch")
	}
	ctx := t.Context()

	// NVML and nvidia-smi describe the same GPUs.
	nvml := gpu.NewNVML("")
	defer nvml.Close()
	byNVML, err := nvml.Detect(ctx)
	require.NoError(t, err, "NVML")
	bySMI, err := (&gpu.SMI{}).Detect(ctx)
	require.NoError(t, err, "nvidia-smi")
	t.Logf("NVML (driver %s): %s", byNVML.DriverVersion, byNVML.Describe())
	t.Logf("nvidia-smi: %s", bySMI.Describe())
	for _, inv := range []gpu.Inventory{byNVML, bySMI} {
		data, err := json.Marshal(inv)
		require.NoError(t, err)
		t.Logf("%s: %s", inv.Source, data)
	}
	require.NotEmpty(t, byNVML.GPUs)
	require.NotEmpty(t, byNVML.DriverVersion)
	require.Empty(t, byNVML.Warnings)
	require.Len(t, bySMI.GPUs, len(byNVML.GPUs))
	for i, n := range byNVML.GPUs {
		s := bySMI.GPUs[i]
		require.Equal(t, n.Index, s.Index)
		require.Equal(t, n.UUID, s.UUID)
		require.Regexp(t, `^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`, n.UUID)
		require.Equal(t, n.Model, s.Model)
		// nvidia-smi prints whole MiB; NVML counts bytes.
		require.Equal(t, n.MemoryTotalBytes>>20, s.MemoryTotalBytes>>20, "GPU %d total memory", i)
		require.Positive(t, n.MemoryTotalBytes)
		require.InDelta(t, n.MemoryUsedBytes, s.MemoryUsedBytes, float64(256*mib), "GPU %d memory in use", i)
		for _, g := range []gpu.GPU{n, s} {
			require.NotNil(t, g.TemperatureCelsius, "GPU %d temperature (%s)", i, g)
			require.NotNil(t, g.UtilizationPercent, "GPU %d utilisation (%s; nil is right only in MIG mode)", i, g)
		}
	}

	// gpu=auto takes one slot per GPU from the driver's own report.
	det, err := gpu.NewDetector(gpu.SourceAuto)
	require.NoError(t, err)
	defer det.Close()
	w, err := newTestWorker(t, "cpu=1,gpu=auto", det)
	require.NoError(t, err)
	require.Equal(t, len(byNVML.GPUs), w.slots[GPUSlotType])

	// A GPU run's executor sees, through CUDA, exactly one device: the one the worker gave
	// it. The memory it fills shows in the worker's next reading of that GPU.
	script, err := filepath.Abs(filepath.Join(testdata, "cuda_executor.py"))
	require.NoError(t, err)
	flowYAML := fmt.Sprintf("executors:\n  - name: cuda\n    command: [python3, %q]\n", script)
	dir := t.TempDir()
	out, release := filepath.Join(dir, "out.json"), filepath.Join(dir, "release")
	const alloc = 2 << 30
	state, err := structpb.NewStruct(map[string]any{"out": out, "release": release, "alloc_bytes": alloc})
	require.NoError(t, err)
	usedBefore := map[string]int64{}
	for _, g := range w.gpuInventory() {
		usedBefore[g.GetUuid()] = g.GetMemoryUsedBytes()
	}
	w.start(&schedulerv1.Assignment{Run: "runs/cuda", Epoch: 1, Assistant: "assistants/cuda", AssistantVersion: 1,
		Flow: flowYAML, State: state, Attempt: 1, SlotType: GPUSlotType})
	w.mu.Lock()
	r := w.runs["runs/cuda"]
	w.mu.Unlock()
	require.NotNil(t, r, "the GPU run did not start")
	require.Eventually(t, func() bool { _, err := os.Stat(out); return err == nil }, 2*time.Minute, 10*time.Millisecond,
		"the executor never reported what it saw")
	data, err := os.ReadFile(out)
	require.NoError(t, err)
	t.Logf("the executor saw: %s", data)
	var seen struct {
		Visible   string `json:"CUDA_VISIBLE_DEVICES"`
		Count     int    `json:"device_count"`
		Name      string `json:"name"`
		UUID      string `json:"uuid"`
		Allocated int64  `json:"allocated_bytes"`
		Error     string `json:"error"`
	}
	require.NoError(t, json.Unmarshal(data, &seen))
	require.Empty(t, seen.Error)
	require.Equal(t, r.gpu, seen.Visible, "CUDA_VISIBLE_DEVICES is the run's GPU")
	require.Equal(t, 1, seen.Count, "CUDA sees exactly one device")
	require.Equal(t, r.gpu, seen.UUID, "CUDA's device 0 is the GPU the worker gave the run")
	require.Equal(t, int64(alloc), seen.Allocated)

	w.probeGPUs(ctx)
	var during int64
	for _, g := range w.gpuInventory() {
		if g.GetUuid() == r.gpu {
			during = g.GetMemoryUsedBytes()
			assert.Equal(t, g.GetModel(), seen.Name, "CUDA's name of the device is the driver's model")
		}
	}
	t.Logf("memory in use on %s: %d MiB before the run, %d MiB while it holds %d MiB", r.gpu, usedBefore[r.gpu]>>20, during>>20, int64(alloc)>>20)
	require.GreaterOrEqual(t, during-usedBefore[r.gpu], int64(alloc), "the worker's reading shows the run's memory")
	require.NotEmpty(t, w.heartbeat().GetHeartbeat().GetGpus(), "the next heartbeat carries the changed reading")

	require.NoError(t, os.WriteFile(release, nil, 0o644))
	<-r.done
	w.mu.Lock()
	res := w.unacked["runs/cuda"]
	held := len(w.gpus.holder)
	w.mu.Unlock()
	require.Equal(t, schedulerv1.RunResult_OUTCOME_SUCCEEDED, res.GetOutcome())
	require.Zero(t, held, "the ended run freed its GPU")
	w.probeGPUs(ctx)
	for _, g := range w.gpuInventory() {
		if g.GetUuid() == r.gpu {
			t.Logf("memory in use on %s after the run freed its block (the warm replica keeps its CUDA context): %d MiB", r.gpu, g.GetMemoryUsedBytes()>>20)
			require.Less(t, g.GetMemoryUsedBytes(), during-int64(alloc)/2, "the freed block shows in the reading")
		}
	}
}
