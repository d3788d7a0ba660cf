package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/config"
	"github.com/agentserver/agentserver/services/worker-agent/internal/gpu"
)

// GPUSlotType is the slot type whose slots are GPUs: each slot of this type is one GPU of
// the machine, and a run on it sees that GPU only.
const GPUSlotType = "gpu"

// AutoSlots is the count ParseSlots gives "gpu=auto"; New replaces it with the number of
// GPUs found.
const AutoSlots = -1

// DefaultGPUProbeInterval is how often a worker with GPU slots re-reads GPU memory and
// utilisation by default. NVML answers in microseconds; the nvidia-smi fallback starts a
// process, which is why this is seconds rather than the heartbeat's own period.
const DefaultGPUProbeInterval = 5 * time.Second

// gpuDetectTimeout bounds the first detection in New and Probe (NVML initialisation can take
// seconds on a machine whose GPUs are not in persistence mode).
const gpuDetectTimeout = 60 * time.Second

// GPUConfig configures how a worker finds its GPUs. It only matters when WORKER_SLOTS has
// gpu slots: a worker without them never loads NVML nor runs nvidia-smi.
type GPUConfig struct {
	// Discovery is how GPUs are found: "auto" (NVML, else nvidia-smi; the default), "nvml"
	// or "nvidia-smi".
	Discovery string
	// Devices restricts the worker to some of the machine's GPUs, by index (as nvidia-smi
	// numbers them) or UUID, comma separated; empty means all. It lets several workers share
	// one machine.
	Devices string
	// ProbeInterval is how often GPU memory and utilisation are re-read for heartbeats;
	// 0 means DefaultGPUProbeInterval.
	ProbeInterval time.Duration
}

// DefaultGPUConfig returns the default GPU configuration.
func DefaultGPUConfig() GPUConfig {
	return GPUConfig{Discovery: gpu.SourceAuto, ProbeInterval: DefaultGPUProbeInterval}
}

// bindGPU registers the GPU settings on set, with cfg's values as defaults.
func bindGPU(set *config.Set, cfg *GPUConfig) {
	set.String(&cfg.Discovery, "gpu-discovery", "WORKER_GPU_DISCOVERY", cfg.Discovery, "how GPUs are found: auto (NVML, else nvidia-smi), nvml or nvidia-smi")
	set.String(&cfg.Devices, "gpus", "WORKER_GPUS", cfg.Devices, "GPUs this worker may use, by index or UUID, comma separated (default: all)")
	set.Duration(&cfg.ProbeInterval, "gpu-probe-interval", "WORKER_GPU_PROBE_INTERVAL", cfg.ProbeInterval, "how often GPU memory and utilisation are re-read")
}

// Option changes how New and Probe build a worker.
type Option func(*options)

type options struct {
	detector gpu.Detector
	// dial holds extra options of the scheduler connection (dial.go).
	dial dialSettings
}

// WithGPUDetector makes the worker read its GPUs through d instead of the NVIDIA driver
// (tests; GPUConfig.Discovery is then ignored). The worker never closes d.
func WithGPUDetector(d gpu.Detector) Option {
	return func(o *options) { o.detector = d }
}

// gpuState is the GPUs behind a worker's gpu slots. The fields below detector are guarded
// by Worker.mu.
type gpuState struct {
	detector gpu.Detector
	// closer is the detector New made itself, closed by Run; nil for one given by an Option.
	closer   io.Closer
	interval time.Duration

	// devices are the GPUs the slots map to, one per slot, in index order, with their
	// latest readings.
	devices []gpu.GPU
	// holder maps a GPU's UUID to the run that holds it.
	holder map[string]string
	// changed says the readings changed since a heartbeat last carried them.
	changed bool
	// failing and missing remember what was logged, so a lasting problem is logged once.
	failing bool
	missing map[string]bool
}

// setupGPUs resolves the gpu slots of slots against the machine's GPUs: it fills in
// gpu=auto, and refuses, with a message saying what was found and what to check, a worker
// whose gpu slots the driver cannot back. A worker without gpu slots gets an empty state
// and the driver is never touched.
func setupGPUs(cfg GPUConfig, slots map[string]int, opts []Option) (*gpuState, gpu.Inventory, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if cfg.ProbeInterval < 0 {
		return nil, gpu.Inventory{}, errors.New("WORKER_GPU_PROBE_INTERVAL must not be negative")
	}
	st := &gpuState{detector: o.detector, interval: cfg.ProbeInterval, holder: make(map[string]string), missing: make(map[string]bool)}
	if st.interval == 0 {
		st.interval = DefaultGPUProbeInterval
	}
	want, ok := slots[GPUSlotType]
	if st.detector == nil {
		// Validate the setting even when unused, so a typo never waits for a GPU machine.
		det, err := gpu.NewDetector(cfg.Discovery)
		if err != nil {
			return nil, gpu.Inventory{}, fmt.Errorf("WORKER_GPU_DISCOVERY: %w", err)
		}
		if !ok {
			_ = det.Close() // never used: nothing was loaded
			return st, gpu.Inventory{}, nil
		}
		st.detector, st.closer = det, det
	} else if !ok {
		return st, gpu.Inventory{}, nil
	}
	fail := func(err error) (*gpuState, gpu.Inventory, error) {
		if st.closer != nil {
			_ = st.closer.Close()
		}
		return nil, gpu.Inventory{}, err
	}
	asked := FormatSlots(map[string]int{GPUSlotType: want})

	ctx, cancel := context.WithTimeout(context.Background(), gpuDetectTimeout)
	defer cancel()
	inv, err := st.detector.Detect(ctx)
	if err != nil {
		reason := strings.TrimPrefix(err.Error(), gpu.ErrNoDriver.Error()+": ")
		return fail(fmt.Errorf("WORKER_SLOTS asks for %s, but no usable NVIDIA driver was found (%s). "+
			"Check that the NVIDIA driver is installed and that `nvidia-smi` lists the GPUs on this machine "+
			"(in a container, start it with the NVIDIA container runtime, e.g. `docker run --gpus all`), "+
			"or remove gpu from WORKER_SLOTS", asked, reason))
	}
	found := describeFound(inv)
	usable, err := pickDevices(inv.GPUs, cfg.Devices)
	if err != nil {
		return fail(fmt.Errorf("WORKER_GPUS %q: %w; the driver reports %s. Check `nvidia-smi -L`", cfg.Devices, err, found))
	}
	if cfg.Devices != "" {
		found += fmt.Sprintf(", of which WORKER_GPUS %q allows %d", cfg.Devices, len(usable))
	}
	switch {
	case want == AutoSlots && len(usable) == 0:
		return fail(fmt.Errorf("WORKER_SLOTS asks for gpu=auto, but the driver reports %s. "+
			"Check that `nvidia-smi` lists the GPUs you expect, or remove gpu from WORKER_SLOTS", found))
	case want == AutoSlots:
		want = len(usable)
	case len(usable) < want:
		return fail(fmt.Errorf("WORKER_SLOTS asks for %s, but the driver reports %s. "+
			"Check that `nvidia-smi` lists every GPU you expect (a GPU that fell off the bus or needs a reset is not listed), "+
			"or ask for fewer GPU slots (gpu=%d, or gpu=auto)", asked, found, len(usable)))
	}
	slots[GPUSlotType] = want
	st.devices = slices.Clone(usable[:want])
	return st, inv, nil
}

// describeFound says what a detection found, for refusals.
func describeFound(inv gpu.Inventory) string {
	s := inv.Describe() + " (through " + inv.Source
	if inv.DriverVersion != "" {
		s += ", driver " + inv.DriverVersion
	}
	s += ")"
	if len(inv.Warnings) > 0 {
		s += "; it also said: " + strings.Join(inv.Warnings, "; ")
	}
	return s
}

// pickDevices returns the GPUs of gpus that spec allows (all when spec is empty), in index
// order.
func pickDevices(gpus []gpu.GPU, spec string) ([]gpu.GPU, error) {
	if strings.TrimSpace(spec) == "" {
		return gpus, nil
	}
	var out []gpu.GPU
	for _, id := range strings.Split(spec, ",") {
		if id = strings.TrimSpace(id); id == "" {
			continue
		}
		i := slices.IndexFunc(gpus, func(g gpu.GPU) bool {
			n, err := strconv.Atoi(id)
			return g.UUID == id || (err == nil && g.Index == n)
		})
		if i < 0 {
			return nil, fmt.Errorf("GPU %q is not among the GPUs found", id)
		}
		if !slices.ContainsFunc(out, func(g gpu.GPU) bool { return g.UUID == gpus[i].UUID }) {
			out = append(out, gpus[i])
		}
	}
	slices.SortFunc(out, func(a, b gpu.GPU) int { return a.Index - b.Index })
	return out, nil
}

// gpuFree reports whether a run of slotType can get its GPU now: always for other slot
// types. Call with w.mu held.
func (w *Worker) gpuFree(slotType, want string) bool {
	if slotType != GPUSlotType {
		return true
	}
	if want != "" {
		// The scheduler chose this GPU (by its free memory): it must exist and be free.
		_, busy := w.gpus.holder[want]
		return !busy && slices.ContainsFunc(w.gpus.devices, func(d gpu.GPU) bool { return d.UUID == want })
	}
	return len(w.gpus.holder) < len(w.gpus.devices)
}

// takeGPU gives run a free GPU when slotType is GPUSlotType and returns its UUID: the free
// GPU with the most free memory by the latest reading (other processes may hold some), the
// lowest index among equals; or the GPU want when the scheduler chose one. It returns ""
// for other slot types. Call with w.mu held, after gpuFree said yes.
func (w *Worker) takeGPU(run, slotType, want string) string {
	if slotType != GPUSlotType {
		return ""
	}
	if want != "" {
		w.gpus.holder[want] = run
		return want
	}
	best := -1
	for i, d := range w.gpus.devices {
		if _, busy := w.gpus.holder[d.UUID]; busy {
			continue
		}
		if best < 0 || d.MemoryFreeBytes() > w.gpus.devices[best].MemoryFreeBytes() {
			best = i
		}
	}
	if best < 0 {
		return ""
	}
	uuid := w.gpus.devices[best].UUID
	w.gpus.holder[uuid] = run
	return uuid
}

// releaseGPU frees the GPU r holds, if any. Call with w.mu held.
func (w *Worker) releaseGPU(r *activeRun) {
	if r.gpu != "" && w.gpus.holder[r.gpu] == r.name {
		delete(w.gpus.holder, r.gpu)
	}
}

// runEnv is what a run's executor replicas get on top of the worker's environment: a GPU
// run sees exactly its GPU, by UUID (indexes differ between NVML's and CUDA's default
// order); any other run sees no GPU at all.
func runEnv(r *activeRun) []string {
	return []string{"CUDA_VISIBLE_DEVICES=" + r.gpu}
}

// gpuInventory is the worker's GPUs with their latest readings, as the scheduler protocol
// carries them. Call with w.mu held.
func (w *Worker) gpuInventory() []*agentserverv1.Gpu {
	if len(w.gpus.devices) == 0 {
		return nil
	}
	out := make([]*agentserverv1.Gpu, len(w.gpus.devices))
	for i, g := range w.gpus.devices {
		out[i] = &agentserverv1.Gpu{
			Index: int32(g.Index), Uuid: g.UUID, Model: g.Model,
			MemoryTotalBytes: g.MemoryTotalBytes, MemoryUsedBytes: g.MemoryUsedBytes,
			UtilizationPercent: int32(deref(g.UtilizationPercent)), TemperatureCelsius: int32(deref(g.TemperatureCelsius)),
		}
	}
	return out
}

// changedGPUs is gpuInventory when the readings changed since a heartbeat last carried
// them, else nil (the scheduler keeps what it has). Call with w.mu held.
func (w *Worker) changedGPUs() []*agentserverv1.Gpu {
	if !w.gpus.changed {
		return nil
	}
	w.gpus.changed = false
	return w.gpuInventory()
}

// gpuLoop re-reads the GPUs every interval until ctx ends.
func (w *Worker) gpuLoop(ctx context.Context) {
	t := time.NewTicker(w.gpus.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.probeGPUs(ctx)
		}
	}
}

// probeGPUs reads the GPUs once and records what changed. A failed reading keeps the last
// one (the slots stay: runs in flight keep their GPUs) and is logged once per outage.
func (w *Worker) probeGPUs(ctx context.Context) {
	inv, err := w.gpus.detector.Detect(ctx)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		if !w.gpus.failing && ctx.Err() == nil {
			w.log.Warn("reading GPUs failed; reporting the last readings", "err", err)
		}
		w.gpus.failing = ctx.Err() == nil
		return
	}
	if w.gpus.failing {
		w.log.Info("reading GPUs works again")
		w.gpus.failing = false
	}
	for i := range w.gpus.devices {
		d := &w.gpus.devices[i]
		j := slices.IndexFunc(inv.GPUs, func(g gpu.GPU) bool { return g.UUID == d.UUID })
		if j < 0 {
			if !w.gpus.missing[d.UUID] {
				w.log.Warn("a GPU of this worker is no longer reported by the driver; check `nvidia-smi`", "gpu", d.String())
				w.gpus.missing[d.UUID] = true
			}
			continue
		}
		delete(w.gpus.missing, d.UUID)
		g := inv.GPUs[j]
		if g.MemoryUsedBytes != d.MemoryUsedBytes || g.MemoryTotalBytes != d.MemoryTotalBytes ||
			deref(g.UtilizationPercent) != deref(d.UtilizationPercent) {
			w.gpus.changed = true
		}
		// Temperature rides along but alone never makes a heartbeat carry the GPUs.
		d.MemoryTotalBytes, d.MemoryUsedBytes = g.MemoryTotalBytes, g.MemoryUsedBytes
		d.UtilizationPercent, d.TemperatureCelsius = g.UtilizationPercent, g.TemperatureCelsius
	}
}

func deref(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}

// Report is the inventory a worker registers with; `worker-agent --probe` prints it as
// JSON.
type Report struct {
	// Pool is the worker's pool.
	Pool string `json:"pool"`
	// Hostname is the machine's host name.
	Hostname string `json:"hostname"`
	// Slots are the slots by type, gpu=auto resolved.
	Slots map[string]int `json:"slots"`
	// MemoryTotalBytes and MemoryFreeBytes are the machine's memory.
	MemoryTotalBytes int64 `json:"memory_total_bytes"`
	// MemoryFreeBytes is the machine's available memory.
	MemoryFreeBytes int64 `json:"memory_free_bytes"`
	// GPUSource says how GPUs were read ("nvml" or "nvidia-smi"); empty without gpu slots.
	GPUSource string `json:"gpu_source,omitempty"`
	// DriverVersion is the NVIDIA driver's version when the source reports it.
	DriverVersion string `json:"driver_version,omitempty"`
	// GPUs are the GPUs behind the gpu slots, one per slot.
	GPUs []gpu.GPU `json:"gpus"`
	// Warnings are GPUs the driver could not read, or other problems it reported.
	Warnings []string `json:"warnings,omitempty"`
}

// Probe resolves cfg's slots and GPUs exactly as New does, without connecting to a
// scheduler or starting anything, and returns what the worker would register. It fails
// with New's message when the GPU slots cannot be backed.
func Probe(cfg Config, opts ...Option) (*Report, error) {
	slots, err := ParseSlots(cfg.Slots)
	if err != nil {
		return nil, err
	}
	st, inv, err := setupGPUs(cfg.GPU, slots, opts)
	if err != nil {
		return nil, err
	}
	if st.closer != nil {
		defer st.closer.Close()
	}
	hostname, _ := os.Hostname()
	total, free := memInfo()
	return &Report{
		Pool: cfg.Pool, Hostname: hostname, Slots: slots, MemoryTotalBytes: total, MemoryFreeBytes: free,
		GPUSource: inv.Source, DriverVersion: inv.DriverVersion, GPUs: append([]gpu.GPU{}, st.devices...),
		Warnings: inv.Warnings,
	}, nil
}

// autoHint adds to ParseSlots' message for a bad count of typ that gpu may also be "auto".
func autoHint(typ string) string {
	if typ == GPUSlotType {
		return `, or "auto" (one slot per GPU found)`
	}
	return ""
}
