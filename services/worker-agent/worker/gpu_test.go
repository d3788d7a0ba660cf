package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/pkg/proctest"
	"github.com/agentserver/agentserver/services/worker-agent/internal/gpu"
)

// testdata is the worker-agent's testdata directory (fixtures and stand-ins).
const testdata = "../testdata"

const (
	mib   = int64(1) << 20
	uuid0 = "GPU-2b7f6b1e-9c1d-4b7a-8f3e-5d2c1a0e9b47"
	uuid1 = "GPU-7e0c3d5a-1f2b-4c6d-9e8f-0a1b2c3d4e5f"
)

func intPtr(v int) *int { return &v }

// fakeDetector stands in for the NVIDIA driver: it returns what the test set.
type fakeDetector struct {
	mu    sync.Mutex
	inv   gpu.Inventory
	err   error
	calls int
}

func (f *fakeDetector) Detect(context.Context) (gpu.Inventory, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	inv := f.inv
	inv.GPUs = slices.Clone(inv.GPUs)
	return inv, f.err
}

func (f *fakeDetector) set(inv gpu.Inventory, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inv, f.err = inv, err
}

func (f *fakeDetector) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// machine returns an inventory of n A100s with distinct UUIDs (the first two are those of
// the two-a100.csv fixture) and no memory in use.
func machine(n int) gpu.Inventory {
	inv := gpu.Inventory{Source: gpu.SourceNVML, DriverVersion: "550.54.15"}
	for i := range n {
		id := fmt.Sprintf("GPU-00000000-0000-0000-0000-%012d", i)
		switch i {
		case 0:
			id = uuid0
		case 1:
			id = uuid1
		}
		inv.GPUs = append(inv.GPUs, gpu.GPU{Index: i, UUID: id, Model: "NVIDIA A100-SXM4-80GB",
			MemoryTotalBytes: 81920 * mib, UtilizationPercent: intPtr(0), TemperatureCelsius: intPtr(30)})
	}
	return inv
}

func newTestWorker(t *testing.T, slots string, det gpu.Detector, edit ...func(*Config)) (*Worker, error) {
	t.Helper()
	cfg := Defaults()
	cfg.Slots, cfg.WorkDir = slots, t.TempDir()
	for _, e := range edit {
		e(&cfg)
	}
	w, err := New(cfg, slog.New(slog.DiscardHandler), WithGPUDetector(det))
	if err == nil {
		t.Cleanup(func() { w.exec.Close() })
	}
	return w, err
}

func TestParseGPUSlots(t *testing.T) {
	t.Parallel()
	got, err := ParseSlots("cpu=2, gpu=auto")
	require.NoError(t, err)
	require.Equal(t, map[string]int{"cpu": 2, "gpu": AutoSlots}, got)
	require.Equal(t, "cpu=2,gpu=auto", FormatSlots(got))

	_, err = ParseSlots("gpu=many")
	require.ErrorContains(t, err, `count of "gpu" must be a whole number from 1 to 1024, or "auto" (one slot per GPU found)`)
	_, err = ParseSlots("cpu=auto")
	require.ErrorContains(t, err, `count of "cpu" must be a whole number from 1 to 1024`)
	require.NotContains(t, err.Error(), "auto (", "only gpu may be auto")
	_, err = ParseSlots("gpu=auto,gpu=1")
	require.ErrorContains(t, err, "appears twice")
}

func TestGPUSlotsAgainstTheDriver(t *testing.T) {
	t.Parallel()

	t.Run("auto takes one slot per GPU", func(t *testing.T) {
		t.Parallel()
		w, err := newTestWorker(t, "cpu=2,gpu=auto", &fakeDetector{inv: machine(3)})
		require.NoError(t, err)
		require.Equal(t, map[string]int{"cpu": 2, "gpu": 3}, w.slots)
		require.Len(t, w.gpuInventory(), 3)
	})

	t.Run("more GPUs than slots: the first ones by index", func(t *testing.T) {
		t.Parallel()
		w, err := newTestWorker(t, "gpu=2", &fakeDetector{inv: machine(4)})
		require.NoError(t, err)
		require.Equal(t, 2, w.slots[GPUSlotType])
		inv := w.gpuInventory()
		require.Equal(t, []string{uuid0, uuid1}, []string{inv[0].GetUuid(), inv[1].GetUuid()})
	})

	t.Run("WORKER_GPUS picks GPUs by index or UUID", func(t *testing.T) {
		t.Parallel()
		det := &fakeDetector{inv: machine(4)}
		w, err := newTestWorker(t, "gpu=auto", det, func(c *Config) { c.GPU.Devices = "3, " + uuid1 })
		require.NoError(t, err)
		require.Equal(t, 2, w.slots[GPUSlotType])
		inv := w.gpuInventory()
		require.Equal(t, []int32{1, 3}, []int32{inv[0].GetIndex(), inv[1].GetIndex()})

		_, err = newTestWorker(t, "gpu=1", det, func(c *Config) { c.GPU.Devices = "GPU-nope" })
		require.ErrorContains(t, err, `WORKER_GPUS "GPU-nope": GPU "GPU-nope" is not among the GPUs found; the driver reports 4 GPU(s)`)
		require.ErrorContains(t, err, "`nvidia-smi -L`")

		_, err = newTestWorker(t, "gpu=3", det, func(c *Config) { c.GPU.Devices = "0,1" })
		require.ErrorContains(t, err, `of which WORKER_GPUS "0,1" allows 2`)
	})

	t.Run("fewer GPUs than slots", func(t *testing.T) {
		t.Parallel()
		_, err := newTestWorker(t, "cpu=4,gpu=3", &fakeDetector{inv: machine(2)})
		require.ErrorContains(t, err, "WORKER_SLOTS asks for gpu=3, but the driver reports 2 GPU(s): "+
			"0: NVIDIA A100-SXM4-80GB "+uuid0+" (81920 MiB); 1: NVIDIA A100-SXM4-80GB "+uuid1+" (81920 MiB) (through nvml, driver 550.54.15)")
		require.ErrorContains(t, err, "Check that `nvidia-smi` lists every GPU you expect")
		require.ErrorContains(t, err, "(gpu=2, or gpu=auto)")
	})

	t.Run("auto without GPUs", func(t *testing.T) {
		t.Parallel()
		_, err := newTestWorker(t, "gpu=auto", &fakeDetector{inv: gpu.Inventory{Source: gpu.SourceSMI}})
		require.ErrorContains(t, err, "WORKER_SLOTS asks for gpu=auto, but the driver reports no GPUs (through nvidia-smi)")
		require.ErrorContains(t, err, "`nvidia-smi`")
	})

	t.Run("no usable driver", func(t *testing.T) {
		t.Parallel()
		det := &fakeDetector{err: fmt.Errorf("%w: NVML: libnvidia-ml.so.1: cannot open shared object file; nvidia-smi: nvidia-smi not found on PATH", gpu.ErrNoDriver)}
		_, err := newTestWorker(t, "cpu=1,gpu=1", det)
		require.ErrorContains(t, err, "WORKER_SLOTS asks for gpu=1, but no usable NVIDIA driver was found "+
			"(NVML: libnvidia-ml.so.1: cannot open shared object file; nvidia-smi: nvidia-smi not found on PATH)")
		require.ErrorContains(t, err, "Check that the NVIDIA driver is installed and that `nvidia-smi` lists the GPUs")
	})

	t.Run("a worker without gpu slots never asks the driver", func(t *testing.T) {
		t.Parallel()
		det := &fakeDetector{err: gpu.ErrNoDriver}
		w, err := newTestWorker(t, "cpu=2", det)
		require.NoError(t, err)
		require.Zero(t, det.callCount())
		require.Nil(t, w.gpuInventory())

		_, err = New(Config{Slots: "cpu=1", SchedulerAddrs: "x:1", GPU: GPUConfig{Discovery: "cuda"}}, slog.New(slog.DiscardHandler))
		require.ErrorContains(t, err, `WORKER_GPU_DISCOVERY: GPU discovery "cuda": must be auto, nvml or nvidia-smi`)
	})
}

// gpuFlow is a one-step flow whose executor reports its GPU environment (see
// testdata/gpu_env_executor.py).
func gpuFlow(t *testing.T) string {
	t.Helper()
	script, err := filepath.Abs(filepath.Join(testdata, "gpu_env_executor.py"))
	require.NoError(t, err)
	return fmt.Sprintf("executors:\n  - name: env\n    command: [python3, %q]\n", script)
}

func TestGPURunsGetTheirOwnGPU(t *testing.T) {
	t.Parallel()
	det := &fakeDetector{inv: machine(2)}
	// GPU 0 has less free memory: the first GPU run goes to GPU 1.
	det.inv.GPUs[0].MemoryUsedBytes = 1024 * mib
	w, err := newTestWorker(t, "cpu=1,gpu=2", det)
	require.NoError(t, err)
	dir := t.TempDir()
	release := filepath.Join(dir, "release")
	flowYAML := gpuFlow(t)

	assign := func(run, slotType string) {
		state, err := structpb.NewStruct(map[string]any{"out": filepath.Join(dir, run+".json"), "release": release})
		require.NoError(t, err)
		w.start(&schedulerv1.Assignment{Run: "runs/" + run, Epoch: 1, Assistant: "assistants/gpu", AssistantVersion: 1,
			Flow: flowYAML, State: state, Attempt: 1, SlotType: slotType})
	}
	seen := func(run string) map[string]any {
		path := filepath.Join(dir, run+".json")
		require.Eventually(t, func() bool { _, err := os.Stat(path); return err == nil }, 30*time.Second, 5*time.Millisecond,
			"the executor of %s never started", run)
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		var env map[string]any
		require.NoError(t, json.Unmarshal(data, &env))
		return env
	}
	result := func(run string) *schedulerv1.RunResult {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.unacked["runs/"+run]
	}
	running := func(run string) *activeRun {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.runs["runs/"+run]
	}
	holders := func() map[string]string {
		w.mu.Lock()
		defer w.mu.Unlock()
		return maps.Clone(w.gpus.holder)
	}

	assign("a", GPUSlotType)
	assign("b", GPUSlotType)
	assign("c", "cpu")
	a, b, c := seen("a"), seen("b"), seen("c")
	require.Equal(t, map[string]any{"present": true, "CUDA_VISIBLE_DEVICES": uuid1, "run": "runs/a"}, a,
		"the first GPU run sees exactly one GPU, the one with the most free memory, by UUID")
	require.Equal(t, map[string]any{"present": true, "CUDA_VISIBLE_DEVICES": uuid0, "run": "runs/b"}, b,
		"the second GPU run sees exactly the other GPU")
	require.Equal(t, map[string]any{"present": true, "CUDA_VISIBLE_DEVICES": "", "run": "runs/c"}, c,
		"a CPU run sees no GPU")
	require.Equal(t, map[string]string{uuid1: "runs/a", uuid0: "runs/b"}, holders())

	// Every GPU is held: another GPU run goes straight back to the queue.
	assign("d", GPUSlotType)
	require.Equal(t, schedulerv1.RunResult_OUTCOME_RELEASED, result("d").GetOutcome())
	require.Nil(t, running("d"))

	runs := []*activeRun{running("a"), running("b"), running("c")}
	require.NoError(t, os.WriteFile(release, nil, 0o644))
	for _, r := range runs {
		<-r.done
	}
	for _, run := range []string{"a", "b", "c"} {
		require.Equal(t, schedulerv1.RunResult_OUTCOME_SUCCEEDED, result(run).GetOutcome(), run)
	}
	require.Empty(t, holders(), "ended runs free their GPUs")

	// A freed GPU serves the next run (through the replica warm for that GPU).
	require.NoError(t, os.Remove(release))
	assign("e", GPUSlotType)
	e := running("e")
	require.Equal(t, uuid1, seen("e")["CUDA_VISIBLE_DEVICES"])
	require.NoError(t, os.WriteFile(release, nil, 0o644))
	<-e.done
	require.Equal(t, schedulerv1.RunResult_OUTCOME_SUCCEEDED, result("e").GetOutcome())
	require.Empty(t, holders())
}

func TestGPUInventoryInRegisterAndHeartbeats(t *testing.T) {
	t.Parallel()
	det := &fakeDetector{inv: machine(3)}
	w, err := newTestWorker(t, "gpu=2", det)
	require.NoError(t, err)
	heartbeatGPUs := func() []int64 {
		var used []int64
		for _, g := range w.heartbeat().GetHeartbeat().GetGpus() {
			used = append(used, g.GetMemoryUsedBytes())
		}
		return used
	}

	reg := w.gpuInventory()
	require.Len(t, reg, 2, "only the GPUs behind the slots are reported")
	require.Equal(t, uuid0, reg[0].GetUuid())
	require.Equal(t, "NVIDIA A100-SXM4-80GB", reg[0].GetModel())
	require.Equal(t, 81920*mib, reg[0].GetMemoryTotalBytes())
	require.EqualValues(t, 30, reg[0].GetTemperatureCelsius())
	require.Nil(t, heartbeatGPUs(), "nothing changed since registration")

	// Memory use changes: the next heartbeat carries the GPUs, the one after does not.
	inv := machine(3)
	inv.GPUs[1].MemoryUsedBytes = 2048 * mib
	inv.GPUs[2].MemoryUsedBytes = 4096 * mib // not this worker's GPU
	det.set(inv, nil)
	w.probeGPUs(t.Context())
	require.Equal(t, []int64{0, 2048 * mib}, heartbeatGPUs())
	require.Nil(t, heartbeatGPUs())

	// Utilisation changes too; temperature alone does not.
	inv.GPUs[0].UtilizationPercent = intPtr(93)
	det.set(inv, nil)
	w.probeGPUs(t.Context())
	require.Len(t, heartbeatGPUs(), 2)
	inv.GPUs[0].TemperatureCelsius = intPtr(71)
	det.set(inv, nil)
	w.probeGPUs(t.Context())
	require.Nil(t, heartbeatGPUs())
	require.EqualValues(t, 71, w.gpuInventory()[0].GetTemperatureCelsius(), "but it is kept for the next report")

	// A failed reading, or a GPU gone from it, keeps the last readings.
	det.set(gpu.Inventory{}, errors.New("nvmlDeviceGetCount: GPU is lost"))
	w.probeGPUs(t.Context())
	det.set(gpu.Inventory{GPUs: inv.GPUs[1:]}, nil)
	w.probeGPUs(t.Context())
	require.Nil(t, heartbeatGPUs())
	require.Len(t, w.gpuInventory(), 2)
	require.EqualValues(t, 93, w.gpuInventory()[0].GetUtilizationPercent())
}

// TestProbeCommand runs the worker-agent binary, built without cgo, with the stand-in
// nvidia-smi (testdata/fake-nvidia-smi, not NVIDIA's program) first on PATH.
func TestProbeCommand(t *testing.T) {
	t.Parallel()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build worker-agent with")
	}
	bin := filepath.Join(t.TempDir(), "worker-agent")
	build := exec.CommandContext(t.Context(), goBin, "build", "-o", bin, "./cmd/worker-agent")
	build.Dir = ".."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "building worker-agent without cgo:\n%s", out)

	// Whether the real NVML is on this machine decides whether "auto" can reach the stand-in.
	nvml := gpu.NewNVML("")
	_, nvmlErr := nvml.Detect(t.Context())
	require.NoError(t, nvml.Close())

	type result struct {
		code           int
		stdout, stderr string
		report         Report
		smiCalls       int
	}
	probe := func(t *testing.T, fixture string, status int, env ...string) result {
		t.Helper()
		dir := t.TempDir()
		script, err := os.ReadFile(filepath.Join(testdata, "fake-nvidia-smi"))
		require.NoError(t, err)
		proctest.WriteExecutable(t, filepath.Join(dir, "nvidia-smi"), script)
		output, err := os.ReadFile(filepath.Join(testdata, "nvidia-smi", fixture))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "nvidia-smi.output"), output, 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "nvidia-smi.exit"), []byte(strconv.Itoa(status)), 0o644))

		cmd := exec.CommandContext(t.Context(), bin, "--probe")
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "WORKER_") && !strings.HasPrefix(kv, "PATH=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"))
		cmd.Env = append(cmd.Env, env...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err = cmd.Run()
		var r result
		if exitErr := (*exec.ExitError)(nil); errors.As(err, &exitErr) {
			r.code = exitErr.ExitCode()
		} else {
			require.NoError(t, err)
		}
		r.stdout, r.stderr = stdout.String(), stderr.String()
		if r.code == 0 {
			require.NoError(t, json.Unmarshal(stdout.Bytes(), &r.report), r.stdout)
		}
		if calls, err := os.ReadFile(filepath.Join(dir, "nvidia-smi.calls")); err == nil {
			r.smiCalls = strings.Count(string(calls), "\n")
		}
		return r
	}

	t.Run("gpu=auto through nvidia-smi", func(t *testing.T) {
		t.Parallel()
		r := probe(t, "two-a100.csv", 0, "WORKER_SLOTS=cpu=2,gpu=auto", "WORKER_GPU_DISCOVERY=nvidia-smi", "WORKER_POOL=gpu")
		require.Zero(t, r.code, r.stderr)
		require.Equal(t, 1, r.smiCalls)
		rep := r.report
		require.Equal(t, "gpu", rep.Pool)
		require.Equal(t, map[string]int{"cpu": 2, "gpu": 2}, rep.Slots)
		require.Equal(t, gpu.SourceSMI, rep.GPUSource)
		require.Positive(t, rep.MemoryTotalBytes)
		require.Equal(t, []gpu.GPU{
			{Index: 0, UUID: uuid0, Model: "NVIDIA A100-SXM4-80GB", MemoryTotalBytes: 81920 * mib, MemoryUsedBytes: 4 * mib, UtilizationPercent: intPtr(0), TemperatureCelsius: intPtr(31)},
			{Index: 1, UUID: uuid1, Model: "NVIDIA A100-SXM4-80GB", MemoryTotalBytes: 81920 * mib, MemoryUsedBytes: 60211 * mib, UtilizationPercent: intPtr(87), TemperatureCelsius: intPtr(58)},
		}, rep.GPUs)
		require.Contains(t, r.stdout, `"utilization_percent": 87`)
	})

	t.Run("auto discovery falls back to nvidia-smi without NVML", func(t *testing.T) {
		t.Parallel()
		if nvmlErr == nil {
			t.Skip("this machine has a working NVML, which auto discovery prefers to the stand-in")
		}
		r := probe(t, "h100-na-fields.csv", 0, "WORKER_SLOTS=gpu=auto")
		require.Zero(t, r.code, r.stderr)
		require.Equal(t, gpu.SourceSMI, r.report.GPUSource)
		require.Len(t, r.report.GPUs, 3)
		require.Nil(t, r.report.GPUs[0].UtilizationPercent)
		require.Contains(t, r.stdout, `"utilization_percent": null`)
	})

	t.Run("WORKER_GPUS", func(t *testing.T) {
		t.Parallel()
		r := probe(t, "two-a100.csv", 0, "WORKER_SLOTS=gpu=auto", "WORKER_GPU_DISCOVERY=nvidia-smi", "WORKER_GPUS="+uuid1)
		require.Zero(t, r.code, r.stderr)
		require.Equal(t, map[string]int{"gpu": 1}, r.report.Slots)
		require.Len(t, r.report.GPUs, 1)
		require.Equal(t, uuid1, r.report.GPUs[0].UUID)
	})

	t.Run("fewer GPUs than slots", func(t *testing.T) {
		t.Parallel()
		r := probe(t, "two-a100.csv", 0, "WORKER_SLOTS=cpu=4,gpu=4", "WORKER_GPU_DISCOVERY=nvidia-smi")
		require.Equal(t, 1, r.code)
		require.Empty(t, r.stdout)
		require.Contains(t, r.stderr, "worker-agent: WORKER_SLOTS asks for gpu=4, but the driver reports 2 GPU(s): 0: NVIDIA A100-SXM4-80GB "+uuid0)
		require.Contains(t, r.stderr, "Check that `nvidia-smi` lists every GPU you expect")
	})

	t.Run("driver not loaded", func(t *testing.T) {
		t.Parallel()
		r := probe(t, "driver-not-loaded.txt", 9, "WORKER_SLOTS=gpu=1", "WORKER_GPU_DISCOVERY=nvidia-smi")
		require.Equal(t, 1, r.code)
		require.Empty(t, r.stdout)
		require.Contains(t, r.stderr, "WORKER_SLOTS asks for gpu=1, but no usable NVIDIA driver was found")
		require.Contains(t, r.stderr, "exited with status 9: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver")
		require.Contains(t, r.stderr, "Check that the NVIDIA driver is installed and that `nvidia-smi` lists the GPUs")
	})

	t.Run("CPU-only worker", func(t *testing.T) {
		t.Parallel()
		r := probe(t, "driver-not-loaded.txt", 9, "WORKER_SLOTS=cpu=3")
		require.Zero(t, r.code, r.stderr)
		require.Equal(t, map[string]int{"cpu": 3}, r.report.Slots)
		require.Empty(t, r.report.GPUs)
		require.Contains(t, r.stdout, `"gpus": []`)
		require.Zero(t, r.smiCalls, "a worker without gpu slots never runs nvidia-smi")
	})
}
