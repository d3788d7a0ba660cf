package gpu_test

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/proctest"
	"github.com/agentserver/agentserver/services/worker-agent/internal/gpu"
)

// testdata is the worker-agent's testdata directory: the nvidia-smi fixtures (see its
// nvidia-smi/README.md for where they come from) and the stand-ins.
const testdata = "../../testdata"

const (
	mib = int64(1) << 20
	a0  = "GPU-2b7f6b1e-9c1d-4b7a-8f3e-5d2c1a0e9b47"
	a1  = "GPU-7e0c3d5a-1f2b-4c6d-9e8f-0a1b2c3d4e5f"
)

func ptr(v int) *int { return &v }

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testdata, "nvidia-smi", name))
	require.NoError(t, err)
	return data
}

// standIn installs the stand-in nvidia-smi (testdata/fake-nvidia-smi, not NVIDIA's program)
// in a directory of its own that prints fixture and exits with status, and returns its path.
func standIn(t *testing.T, fixtureName string, status int) string {
	t.Helper()
	dir := t.TempDir()
	script, err := os.ReadFile(filepath.Join(testdata, "fake-nvidia-smi"))
	require.NoError(t, err)
	path := filepath.Join(dir, "nvidia-smi")
	proctest.WriteExecutable(t, path, script)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "nvidia-smi.output"), fixture(t, fixtureName), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "nvidia-smi.exit"), []byte(strconv.Itoa(status)), 0o644))
	return path
}

func TestParseSMIFixtures(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		file  string
		gpus  []gpu.GPU
		notes []string
	}{
		{file: "two-a100.csv", gpus: []gpu.GPU{
			{Index: 0, UUID: a0, Model: "NVIDIA A100-SXM4-80GB", MemoryTotalBytes: 81920 * mib, MemoryUsedBytes: 4 * mib, UtilizationPercent: ptr(0), TemperatureCelsius: ptr(31)},
			{Index: 1, UUID: a1, Model: "NVIDIA A100-SXM4-80GB", MemoryTotalBytes: 81920 * mib, MemoryUsedBytes: 60211 * mib, UtilizationPercent: ptr(87), TemperatureCelsius: ptr(58)},
		}},
		{file: "h100-na-fields.csv", gpus: []gpu.GPU{
			{Index: 0, UUID: "GPU-0f1e2d3c-4b5a-6978-8a9b-c0d1e2f3a4b5", Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 81559 * mib, TemperatureCelsius: ptr(33)},
			{Index: 1, UUID: "GPU-1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809", Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 81559 * mib, MemoryUsedBytes: 1024 * mib, UtilizationPercent: ptr(12)},
			{Index: 2, UUID: "GPU-9f8e7d6c-5b4a-3928-1706-f5e4d3c2b1a0", Model: "NVIDIA H100 80GB HBM3"},
		}},
		{file: "geforce-trailing-space.csv", gpus: []gpu.GPU{
			{Index: 0, UUID: "GPU-4c3b2a19-0817-2635-4453-627180a9b8c7", Model: "NVIDIA GeForce RTX 4090", MemoryTotalBytes: 24564 * mib, MemoryUsedBytes: 1893 * mib, UtilizationPercent: ptr(7), TemperatureCelsius: ptr(41)},
		}},
		{file: "one-gpu-lost.txt",
			gpus: []gpu.GPU{
				{Index: 0, UUID: a0, Model: "NVIDIA A100-SXM4-80GB", MemoryTotalBytes: 81920 * mib, MemoryUsedBytes: 4 * mib, UtilizationPercent: ptr(0), TemperatureCelsius: ptr(31)},
			},
			notes: []string{"Unable to determine the device handle for GPU0000:3B:00.0: Unknown Error"},
		},
		{file: "no-devices.txt", notes: []string{"No devices were found"}},
		{file: "driver-not-loaded.txt", notes: []string{"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running."}},
	} {
		gpus, notes, err := gpu.ParseSMI(fixture(t, tc.file))
		require.NoError(t, err, tc.file)
		require.Equal(t, tc.gpus, gpus, tc.file)
		require.Equal(t, tc.notes, notes, tc.file)
	}

	gpus, _, err := gpu.ParseSMI(fixture(t, "four-l4.csv"))
	require.NoError(t, err)
	require.Len(t, gpus, 4)
	for i, g := range gpus {
		require.Equal(t, i, g.Index)
		require.Equal(t, "NVIDIA L4", g.Model)
		require.Equal(t, 23034*mib, g.MemoryTotalBytes)
	}
	require.Equal(t, 20480*mib, gpus[1].MemoryUsedBytes)
	require.Equal(t, 2554*mib, gpus[1].MemoryFreeBytes())
	require.Equal(t, ptr(100), gpus[1].UtilizationPercent)
}

// Fixtures recorded from real drivers (see testdata/nvidia-smi/README.md for where each one
// comes from); the values asserted are the ones written in the recorded text.
const (
	maskedUUID = "GPU-00000000-0000-0000-0000-000000000000" // as the capture masked it
	h100       = "NVIDIA H100 80GB HBM3"
)

// h200 is the idle GPU of the machine lent to this project, as its nvidia-smi printed it
// (unmasked UUID; 143771 MiB, the same bytes its NVML reported: 150,754,820,096).
var h200 = gpu.GPU{Index: 0, UUID: "GPU-99df4c76-7793-9f54-0a60-669f1a67cc3a", Model: "NVIDIA H200",
	MemoryTotalBytes: 143771 * mib, MemoryUsedBytes: 0, UtilizationPercent: ptr(0), TemperatureCelsius: ptr(36)}

func TestParseSMIRecorded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		file  string
		gpus  []gpu.GPU
		notes []string
	}{
		// `--format=csv` with a header and units, 212 fields of which ours are 7: index 29th,
		// uuid 7th, name 5th, "81559 MiB", "0 MiB", "0 %", temperature.gpu "41" (no unit).
		{file: "recorded-h100-80gb-hbm3-590.48.01-capture-nvidia_gpu_exporter.csv", gpus: []gpu.GPU{
			{Index: 0, UUID: maskedUUID, Model: h100, MemoryTotalBytes: 81559 * mib, MemoryUsedBytes: 0, UtilizationPercent: ptr(0), TemperatureCelsius: ptr(41)},
		}},
		// The same GPU in MIG mode (mig.mode.current "Enabled"): utilization.gpu is "[N/A]".
		{file: "recorded-h100-80gb-hbm3-mig-590.48.01-capture-nvidia_gpu_exporter.csv", gpus: []gpu.GPU{
			{Index: 0, UUID: maskedUUID, Model: h100, MemoryTotalBytes: 81559 * mib, MemoryUsedBytes: 59 * mib, UtilizationPercent: nil, TemperatureCelsius: ptr(42)},
		}},
		// Recorded by this project on the GPU machine lent to it (deploy/scripts/real-gpu-check.sh,
		// 2026-11-27): the worker's own command, and the same with a header (units in brackets).
		{file: "recorded-h200-580.159.04-lent-machine.csv", gpus: []gpu.GPU{h200}},
		{file: "recorded-h200-580.159.04-lent-machine-header.csv", gpus: []gpu.GPU{h200}},
		// nvidia-smi's messages come back as notes, word for word.
		{file: "recorded-no-devices-issue-open-gpu-kernel-modules-862.txt", notes: []string{"No devices were found"}},
		{file: "recorded-driver-not-loaded-issue-mattshma-bigdata-108.txt", notes: []string{"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running."}},
		{file: "recorded-gpu-unknown-error-issue-syno_nvidia_gpu_driver-22.txt", notes: []string{"Unable to determine the device handle for GPU0000:07:00.0: Unknown Error"}},
		{file: "recorded-gpu-lost-issue-OWOD-81.txt", notes: []string{"Unable to determine the device handle for GPU 0000:02:00.0: GPU is lost. Reboot the system to recover this GPU"}},
	} {
		gpus, notes, err := gpu.ParseSMI(fixture(t, tc.file))
		require.NoError(t, err, tc.file)
		require.Equal(t, tc.gpus, gpus, tc.file)
		require.Equal(t, tc.notes, notes, tc.file)
	}

	// A recorded header of another field list (name, pci.bus, index, uuid: five GeForce GPUs)
	// has no memory, utilisation or temperature: rejected, saying which columns are missing,
	// rather than read as GPUs without memory.
	_, _, err := gpu.ParseSMI(fixture(t, "recorded-5-geforce-header-pr-nuxhash-10.csv"))
	require.ErrorContains(t, err, `line 1 "name, pci.bus, index, uuid": the header has no column for memory.total, memory.used, utilization.gpu, temperature.gpu`)
}

// TestSMIDetectRecordedMessages runs the stand-in with the recorded messages and the exit
// statuses nvidia-smi's manual page gives for them (6: no GPU found, 9: driver not loaded,
// 15: GPU lost); the statuses were not part of the recordings.
func TestSMIDetectRecordedMessages(t *testing.T) {
	t.Parallel()
	ctx := t.Context()

	inv, err := (&gpu.SMI{Path: standIn(t, "recorded-no-devices-issue-open-gpu-kernel-modules-862.txt", 6)}).Detect(ctx)
	require.NoError(t, err)
	require.Empty(t, inv.GPUs)

	_, err = (&gpu.SMI{Path: standIn(t, "recorded-driver-not-loaded-issue-mattshma-bigdata-108.txt", 9)}).Detect(ctx)
	require.ErrorIs(t, err, gpu.ErrNoDriver)
	require.ErrorContains(t, err, "exited with status 9: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.")

	// The only GPU lost: nothing was read, so there is no usable driver, and the reason is
	// nvidia-smi's own words.
	_, err = (&gpu.SMI{Path: standIn(t, "recorded-gpu-lost-issue-OWOD-81.txt", 15)}).Detect(ctx)
	require.ErrorIs(t, err, gpu.ErrNoDriver)
	require.ErrorContains(t, err, "exited with status 15: Unable to determine the device handle for GPU 0000:02:00.0: GPU is lost. Reboot the system to recover this GPU")

	_, err = (&gpu.SMI{Path: standIn(t, "recorded-gpu-unknown-error-issue-syno_nvidia_gpu_driver-22.txt", 15)}).Detect(ctx)
	require.ErrorIs(t, err, gpu.ErrNoDriver)
	require.ErrorContains(t, err, "Unable to determine the device handle for GPU0000:07:00.0: Unknown Error")
}

func TestParseSMIHeader(t *testing.T) {
	t.Parallel()
	// Our fields with a header, units, in another order and among other columns, a message
	// line among the records and CRLF line ends.
	out := "uuid, temperature.gpu, index, pci.bus_id, name, memory.used [MiB], utilization.gpu [%], memory.total [MiB]\r\n" +
		"GPU-a, 35, 1, 00000000:17:00.0, NVIDIA L4, 1024 MiB, 7 %, 23034 MiB\r\n" +
		"Unable to determine the device handle for GPU0000:18:00.0: Unknown Error\r\n" +
		"GPU-b, [N/A], 2, 00000000:19:00.0, NVIDIA L4, [N/A], [N/A], 23034 MiB\r\n"
	gpus, notes, err := gpu.ParseSMI([]byte(out))
	require.NoError(t, err)
	require.Equal(t, []gpu.GPU{
		{Index: 1, UUID: "GPU-a", Model: "NVIDIA L4", MemoryTotalBytes: 23034 * mib, MemoryUsedBytes: 1024 * mib, UtilizationPercent: ptr(7), TemperatureCelsius: ptr(35)},
		{Index: 2, UUID: "GPU-b", Model: "NVIDIA L4", MemoryTotalBytes: 23034 * mib},
	}, gpus)
	require.Equal(t, []string{"Unable to determine the device handle for GPU0000:18:00.0: Unknown Error"}, notes)

	// The header of our own query without noheader: the columns in our order.
	gpus, _, err = gpu.ParseSMI([]byte("index, uuid, name, memory.total [MiB], memory.used [MiB], utilization.gpu [%], temperature.gpu\n" +
		"0, GPU-x, NVIDIA A100-SXM4-80GB, 81920 MiB, 4 MiB, 0 %, 31\n"))
	require.NoError(t, err)
	require.Equal(t, []gpu.GPU{{Index: 0, UUID: "GPU-x", Model: "NVIDIA A100-SXM4-80GB", MemoryTotalBytes: 81920 * mib, MemoryUsedBytes: 4 * mib, UtilizationPercent: ptr(0), TemperatureCelsius: ptr(31)}}, gpus)

	for in, msg := range map[string]string{
		// A record with more or fewer fields than the header names.
		"index, uuid, name, memory.total [MiB], memory.used [MiB], utilization.gpu [%], temperature.gpu\n0, GPU-x, Tesla T4, PCIe, 15360 MiB, 0 MiB, 5 %, 40\n": `line 2 "0, GPU-x, Tesla T4, PCIe, 15360 MiB, 0 MiB, 5 %, 40": 8 fields, the header names 7`,
		"index, uuid, name, memory.total [MiB], memory.used [MiB], utilization.gpu [%], temperature.gpu\n0, GPU-x, NVIDIA L4\n":                                 `line 2 "0, GPU-x, NVIDIA L4": 3 fields, the header names 7`,
		"uuid, index, name, memory.total, memory.used, utilization.gpu, temperature.gpu\nGPU-x, first, L4, 1, 2, 3, 4\n":                                        `index "first" is not a GPU index`,
		"index, uuid\n0, GPU-x\n": "the header has no column for name, memory.total, memory.used, utilization.gpu, temperature.gpu",
		// Without a header, a record that starts with an index but lacks fields.
		"0, GPU-x, NVIDIA L4, 23034\n": `line 1 "0, GPU-x, NVIDIA L4, 23034": 4 fields, the query (index,uuid,name,memory.total,memory.used,utilization.gpu,temperature.gpu) asks for 7`,
	} {
		_, _, err := gpu.ParseSMI([]byte(in))
		require.ErrorContains(t, err, msg, in)
	}
}

func TestParseSMIVariants(t *testing.T) {
	t.Parallel()
	// Units left in (csv without nounits), a name with a comma, bare N/A, CRLF.
	gpus, notes, err := gpu.ParseSMI([]byte("3, GPU-x, Tesla T4, PCIe, 15360 MiB, 0 MiB, 5 %, N/A\r\n"))
	require.NoError(t, err)
	require.Empty(t, notes)
	require.Equal(t, []gpu.GPU{{Index: 3, UUID: "GPU-x", Model: "Tesla T4, PCIe", MemoryTotalBytes: 15360 * mib, UtilizationPercent: ptr(5)}}, gpus)

	gpus, notes, err = gpu.ParseSMI(nil)
	require.NoError(t, err)
	require.Empty(t, gpus)
	require.Empty(t, notes)

	for in, msg := range map[string]string{
		"0, [N/A], NVIDIA L4, 23034, 0, 0, 30":                                        "has no UUID",
		"0, GPU-x, NVIDIA L4, lots, 0, 0, 30":                                         `memory.total "lots" is not a whole number of MiB`,
		"0, GPU-x, NVIDIA L4, 23034, -1, 0, 30":                                       `memory.used "-1"`,
		"0, GPU-x, NVIDIA L4, 23034, 0, 12.5, 30":                                     `utilization.gpu "12.5"`,
		"0, GPU-x, NVIDIA L4, 23034, 0, 0, 30 F":                                      `temperature.gpu "30 F"`,
		"1, GPU-y, NVIDIA L4, 23034, 0, 0, 30\n-1, GPU-x, NVIDIA L4, 23034, 0, 0, 30": `line 2 "-1, GPU-x`,
	} {
		_, _, err := gpu.ParseSMI([]byte(in))
		require.ErrorContains(t, err, msg, in)
	}
}

func TestSMIDetect(t *testing.T) {
	t.Parallel()
	ctx := t.Context()

	inv, err := (&gpu.SMI{Path: standIn(t, "two-a100.csv", 0)}).Detect(ctx)
	require.NoError(t, err)
	require.Equal(t, gpu.SourceSMI, inv.Source)
	require.Len(t, inv.GPUs, 2)
	require.Equal(t, a1, inv.GPUs[1].UUID)
	require.Empty(t, inv.Warnings)

	// A driver that sees no GPU is an empty inventory, not a missing driver.
	inv, err = (&gpu.SMI{Path: standIn(t, "no-devices.txt", 6)}).Detect(ctx)
	require.NoError(t, err)
	require.Empty(t, inv.GPUs)

	// One GPU lost: the others are kept, with a warning that quotes nvidia-smi.
	inv, err = (&gpu.SMI{Path: standIn(t, "one-gpu-lost.txt", 15)}).Detect(ctx)
	require.NoError(t, err)
	require.Len(t, inv.GPUs, 1)
	require.Len(t, inv.Warnings, 1)
	require.Contains(t, inv.Warnings[0], "exited with status 15")
	require.Contains(t, inv.Warnings[0], "Unable to determine the device handle for GPU0000:3B:00.0")

	_, err = (&gpu.SMI{Path: standIn(t, "driver-not-loaded.txt", 9)}).Detect(ctx)
	require.ErrorIs(t, err, gpu.ErrNoDriver)
	require.ErrorContains(t, err, "exited with status 9: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver")

	_, err = (&gpu.SMI{Path: filepath.Join(t.TempDir(), "nvidia-smi")}).Detect(ctx)
	require.ErrorIs(t, err, gpu.ErrNoDriver)

	// Output that is not the documented format is a parse error, not a missing driver.
	path := standIn(t, "two-a100.csv", 0)
	require.NoError(t, os.WriteFile(filepath.Join(filepath.Dir(path), "nvidia-smi.output"), []byte("0, GPU-x, L4, 1, 2, 3, hot\n"), 0o644))
	_, err = (&gpu.SMI{Path: path}).Detect(ctx)
	require.ErrorContains(t, err, `temperature.gpu "hot"`)
	require.NotErrorIs(t, err, gpu.ErrNoDriver)
}

func TestAutoFallsBackToSMI(t *testing.T) {
	t.Parallel()
	auto := &gpu.Auto{NVML: gpu.NewNVML(filepath.Join(t.TempDir(), "libnvidia-ml.so.1")), SMI: &gpu.SMI{Path: standIn(t, "four-l4.csv", 0)}}
	defer auto.Close()
	inv, err := auto.Detect(t.Context())
	require.NoError(t, err)
	require.Equal(t, gpu.SourceSMI, inv.Source)
	require.Len(t, inv.GPUs, 4)

	auto = &gpu.Auto{NVML: gpu.NewNVML(filepath.Join(t.TempDir(), "libnvidia-ml.so.1")), SMI: &gpu.SMI{Path: filepath.Join(t.TempDir(), "nvidia-smi")}}
	_, err = auto.Detect(t.Context())
	require.ErrorIs(t, err, gpu.ErrNoDriver)
	require.ErrorContains(t, err, "NVML: ")
	require.ErrorContains(t, err, "; nvidia-smi: ")
	require.NotContains(t, err.Error()[len(gpu.ErrNoDriver.Error()):], gpu.ErrNoDriver.Error(), "the reason is said once")
}

func TestNewDetector(t *testing.T) {
	t.Parallel()
	for _, source := range []string{"", gpu.SourceAuto, gpu.SourceNVML, gpu.SourceSMI} {
		d, err := gpu.NewDetector(source)
		require.NoError(t, err, source)
		require.NoError(t, d.Close())
	}
	_, err := gpu.NewDetector("dcgm")
	require.ErrorContains(t, err, `GPU discovery "dcgm": must be auto, nvml or nvidia-smi`)
}
