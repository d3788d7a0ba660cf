package executor_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/agentserver/agentserver/services/worker-agent/internal/executor"
)

// processCPU is the CPU time this process has used (user + system), executors excluded.
func processCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkNoopRun runs one-step flows through the Go no-op executor (examples/noop), as
// the end-to-end benchmarks do: what a run costs the worker beyond its executor. The
// cpu-µs/op metric is this process's CPU per run.
func BenchmarkNoopRun(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "noop")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = filepath.Join(repoRoot(b), "examples", "noop")
	build.Env = append(os.Environ(), "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("building examples/noop: %v\n%s", err, out)
	}
	m, err := executor.NewManager(executor.Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	f := parseFlow(b, "executors:\n  - name: noop\n    command: ["+bin+"]\n")
	spec := executor.RunSpec{RunName: "runs/bench", Attempt: 1, FlowKey: "assistants/bench@1", Flow: f,
		State: map[string]any{}, Env: []string{"CUDA_VISIBLE_DEVICES="}}
	cb := executor.Callbacks{OnStepStart: func(string) {}, OnCheckpoint: func(string, map[string]any) error { return nil }}
	if out := m.Run(b.Context(), spec, cb); out.Kind != executor.OutcomeSucceeded { // starts the replica
		b.Fatal(out.Error)
	}
	b.ReportAllocs()
	start := processCPU(b)
	for b.Loop() {
		if out := m.Run(b.Context(), spec, cb); out.Kind != executor.OutcomeSucceeded {
			b.Fatal(out.Error)
		}
	}
	b.ReportMetric(float64((processCPU(b)-start).Microseconds())/float64(b.N), "cpu-µs/op")
}
