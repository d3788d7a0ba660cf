//go:build linux && (amd64 || arm64) && !nonvml

package gpu_test

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/services/worker-agent/internal/gpu"
)

// fakeNVML compiles testdata/fake_nvml.c, a stand-in for libnvidia-ml.so.1 (not NVIDIA's
// library), with the given -D flags and returns the library's path. It skips the test on a
// machine without a C compiler.
func fakeNVML(t *testing.T, defines ...string) string {
	t.Helper()
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler (cc) to build the NVML stand-in")
	}
	lib := filepath.Join(t.TempDir(), "libfake-nvml.so")
	args := append([]string{"-shared", "-fPIC", "-o", lib}, defines...)
	out, err := exec.CommandContext(t.Context(), cc, append(args, filepath.Join(testdata, "fake_nvml.c"))...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return lib
}

func TestNVMLThroughStandInLibrary(t *testing.T) {
	t.Parallel()
	n := gpu.NewNVML(fakeNVML(t))
	want := gpu.Inventory{
		Source:        gpu.SourceNVML,
		DriverVersion: "550.54.15",
		GPUs: []gpu.GPU{
			// memory v2: used without the driver's reservation (512 MiB), as nvidia-smi says.
			{Index: 0, UUID: a0, Model: "NVIDIA A100-SXM4-80GB", MemoryTotalBytes: 81920 * mib, MemoryUsedBytes: 1024 * mib, UtilizationPercent: ptr(37), TemperatureCelsius: ptr(45)},
			// Utilisation and temperature not supported: nil, not 0.
			{Index: 1, UUID: "GPU-a1b2c3d4-0000-1111-2222-333344445555", Model: "NVIDIA L4", MemoryTotalBytes: 23034 * mib},
		},
		Warnings: []string{"GPU 2: nvmlDeviceGetHandleByIndex: GPU is lost (NVML error 15)"},
	}
	for range 2 { // NVML is initialised once and read again
		inv, err := n.Detect(t.Context())
		require.NoError(t, err)
		require.Equal(t, want, inv)
	}
	require.NoError(t, n.Close())
	require.NoError(t, n.Close())

	// A driver before R510 has no nvmlDeviceGetMemoryInfo_v2: v1 counts the reservation.
	old := gpu.NewNVML(fakeNVML(t, "-DNO_MEMORY_V2"))
	defer old.Close()
	inv, err := old.Detect(t.Context())
	require.NoError(t, err)
	require.Equal(t, (1024+512)*mib, inv.GPUs[0].MemoryUsedBytes)

	broken := gpu.NewNVML(fakeNVML(t, "-DFAIL_INIT"))
	defer broken.Close()
	_, err = broken.Detect(t.Context())
	require.ErrorIs(t, err, gpu.ErrNoDriver)
	require.ErrorContains(t, err, "nvmlInit: Driver Not Loaded (NVML error 9)")
}

// TestNVMLRecordedH100 reads, through the stand-in library, the values `nvidia-smi -q`
// printed on a real H100 80GB HBM3 with driver 590.48.01 (captures of
// utkuozdemir/nvidia_gpu_exporter; testdata/NVML.md gives the file, commit and line of each).
// The library is ours; only its answers are recorded. nvidia-smi prints whole MiB, so bytes
// are MiB << 20 here: what lies below a MiB was not recorded.
func TestNVMLRecordedH100(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		define string
		gpu    gpu.GPU
	}{
		// idle :: query (-q): FB Memory Usage Total 81559 MiB, Reserved 479 MiB, Used 0 MiB;
		// Utilization GPU 0 %; GPU Current Temp 41 C. Used excludes the 479 MiB reserved
		// (memory v2), as nvidia-smi's Used line does.
		{"-DRECORDED_H100", gpu.GPU{Index: 0, UUID: maskedUUID, Model: h100, MemoryTotalBytes: 81559 * mib, MemoryUsedBytes: 0, UtilizationPercent: ptr(0), TemperatureCelsius: ptr(41)}},
		// load :: query (-q), same GPU: Used 19818 MiB (Reserved 479 MiB); GPU 100 %; 59 C.
		{"-DRECORDED_H100_LOAD", gpu.GPU{Index: 0, UUID: maskedUUID, Model: h100, MemoryTotalBytes: 81559 * mib, MemoryUsedBytes: 19818 * mib, UtilizationPercent: ptr(100), TemperatureCelsius: ptr(59)}},
		// MIG capture, idle :: query (-q): MIG Mode Current Enabled, Utilization GPU N/A
		// (nil, not 0); Used 59 MiB (Reserved 479 MiB); 42 C.
		{"-DRECORDED_H100_MIG", gpu.GPU{Index: 0, UUID: maskedUUID, Model: h100, MemoryTotalBytes: 81559 * mib, MemoryUsedBytes: 59 * mib, UtilizationPercent: nil, TemperatureCelsius: ptr(42)}},
	} {
		n := gpu.NewNVML(fakeNVML(t, tc.define))
		inv, err := n.Detect(t.Context())
		require.NoError(t, err, tc.define)
		require.Equal(t, gpu.Inventory{Source: gpu.SourceNVML, DriverVersion: "590.48.01", GPUs: []gpu.GPU{tc.gpu}}, inv, tc.define)
		require.NoError(t, n.Close())
	}
}

func TestNVMLMissingLibrary(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "libnvidia-ml.so.1")
	n := gpu.NewNVML(missing)
	for range 2 {
		_, err := n.Detect(t.Context())
		require.ErrorIs(t, err, gpu.ErrNoDriver)
		require.ErrorContains(t, err, missing)
	}
	require.NoError(t, n.Close())

	// A library that is not NVML: a missing symbol is an error, never a panic.
	libc := "libc.so.6"
	_, err := gpu.NewNVML(libc).Detect(t.Context())
	require.ErrorIs(t, err, gpu.ErrNoDriver)
	require.ErrorContains(t, err, "libc.so.6 has no nvmlInit_v2")
}

func TestAutoPrefersNVML(t *testing.T) {
	t.Parallel()
	auto := &gpu.Auto{NVML: gpu.NewNVML(fakeNVML(t)), SMI: &gpu.SMI{Path: standIn(t, "four-l4.csv", 0)}}
	defer auto.Close()
	inv, err := auto.Detect(t.Context())
	require.NoError(t, err)
	require.Equal(t, gpu.SourceNVML, inv.Source)
	require.Len(t, inv.GPUs, 2)
}
