//go:build linux && (amd64 || arm64) && !nonvml

package gpu

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/ebitengine/purego"
)

// DefaultNVMLLibrary is the NVML library NewNVML loads: the soname the NVIDIA driver (and
// the NVIDIA container toolkit) installs.
const DefaultNVMLLibrary = "libnvidia-ml.so.1"

// NVML return codes and constants this package uses (nvml.h).
const (
	nvmlSuccess          = 0
	nvmlTemperatureGPU   = 0
	nvmlUUIDBufferSize   = 96 // NVML_DEVICE_UUID_V2_BUFFER_SIZE
	nvmlNameBufferSize   = 96 // NVML_DEVICE_NAME_V2_BUFFER_SIZE
	nvmlDriverBufferSize = 80 // NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE
)

// nvmlMemory is nvmlMemory_t.
type nvmlMemory struct {
	Total, Free, Used uint64
}

// nvmlMemoryV2 is nvmlMemory_v2_t: Go lays the fields out as C does (4 bytes of padding
// after Version), 40 bytes in all.
type nvmlMemoryV2 struct {
	Version                     uint32
	_                           uint32
	Total, Reserved, Free, Used uint64
}

// nvmlMemoryV2Version is nvmlMemory_v2: NVML_STRUCT_VERSION(Memory, 2), the struct's size
// with the version in the top byte.
const nvmlMemoryV2Version = 40 | 2<<24

// nvmlUtilization is nvmlUtilization_t.
type nvmlUtilization struct {
	GPU, Memory uint32
}

// nvmlLib holds the NVML functions, bound with purego.
type nvmlLib struct {
	init          func() int32
	shutdown      func() int32
	errorString   func(ret int32) string
	driverVersion func(buf *byte, size uint32) int32
	count         func(n *uint32) int32
	handleByIndex func(i uint32, dev *uintptr) int32
	index         func(dev uintptr, i *uint32) int32
	uuid          func(dev uintptr, buf *byte, size uint32) int32
	name          func(dev uintptr, buf *byte, size uint32) int32
	memory        func(dev uintptr, m *nvmlMemory) int32
	memoryV2      func(dev uintptr, m *nvmlMemoryV2) int32 // nil with drivers before R510
	utilization   func(dev uintptr, u *nvmlUtilization) int32
	temperature   func(dev uintptr, sensor int32, t *uint32) int32
}

// loadNVML opens the library and binds its functions. It never panics: a missing symbol is
// an error (purego.RegisterLibFunc would panic, so symbols are looked up first).
func loadNVML(path string) (*nvmlLib, error) {
	h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_LOCAL)
	if err != nil {
		// dlerror's message names the library already.
		return nil, fmt.Errorf("%w: %v", ErrNoDriver, err)
	}
	l := &nvmlLib{}
	bind := func(fn any, name string, required bool) error {
		sym, err := purego.Dlsym(h, name)
		if err != nil || sym == 0 {
			if !required {
				return nil
			}
			return fmt.Errorf("%w: %s has no %s (driver too old?)", ErrNoDriver, path, name)
		}
		purego.RegisterFunc(fn, sym)
		return nil
	}
	for _, b := range []struct {
		fn       any
		name     string
		required bool
	}{
		{&l.init, "nvmlInit_v2", true},
		{&l.shutdown, "nvmlShutdown", true},
		{&l.errorString, "nvmlErrorString", true},
		{&l.driverVersion, "nvmlSystemGetDriverVersion", true},
		{&l.count, "nvmlDeviceGetCount_v2", true},
		{&l.handleByIndex, "nvmlDeviceGetHandleByIndex_v2", true},
		{&l.index, "nvmlDeviceGetIndex", true},
		{&l.uuid, "nvmlDeviceGetUUID", true},
		{&l.name, "nvmlDeviceGetName", true},
		{&l.memory, "nvmlDeviceGetMemoryInfo", true},
		{&l.memoryV2, "nvmlDeviceGetMemoryInfo_v2", false},
		{&l.utilization, "nvmlDeviceGetUtilizationRates", true},
		{&l.temperature, "nvmlDeviceGetTemperature", true},
	} {
		if err := bind(b.fn, b.name, b.required); err != nil {
			_ = purego.Dlclose(h)
			return nil, err
		}
	}
	return l, nil
}

func (l *nvmlLib) describe(ret int32) string {
	return fmt.Sprintf("%s (NVML error %d)", l.errorString(ret), ret)
}

// NVML reads the inventory through the NVIDIA Management Library, loaded with dlopen at the
// first Detect (through purego, so no cgo is needed and a machine without the library only
// gets an error). It initialises NVML once and keeps it until Close; each Detect is a few
// cheap driver queries per GPU.
type NVML struct {
	library string

	mu          sync.Mutex
	lib         *nvmlLib
	loadErr     error
	initialized bool
}

// NewNVML returns an NVML detector for library; "" means DefaultNVMLLibrary (found by the
// dynamic loader's search path).
func NewNVML(library string) *NVML {
	if library == "" {
		library = DefaultNVMLLibrary
	}
	return &NVML{library: library}
}

// Detect implements Detector. A library that cannot be loaded is not tried again; an NVML
// that fails to initialise (driver not loaded yet, version mismatch) is, at the next Detect.
func (n *NVML) Detect(ctx context.Context) (Inventory, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lib == nil && n.loadErr == nil {
		n.lib, n.loadErr = loadNVML(n.library)
	}
	if n.loadErr != nil {
		return Inventory{}, n.loadErr
	}
	l := n.lib
	if !n.initialized {
		if ret := l.init(); ret != nvmlSuccess {
			return Inventory{}, fmt.Errorf("%w: nvmlInit: %s", ErrNoDriver, l.describe(ret))
		}
		n.initialized = true
	}
	inv := Inventory{Source: SourceNVML}
	buf := make([]byte, nvmlDriverBufferSize)
	if ret := l.driverVersion(&buf[0], uint32(len(buf))); ret == nvmlSuccess {
		inv.DriverVersion = cString(buf)
	}
	var count uint32
	if ret := l.count(&count); ret != nvmlSuccess {
		return Inventory{}, fmt.Errorf("%w: nvmlDeviceGetCount: %s", ErrNoDriver, l.describe(ret))
	}
	for i := range count {
		if ctx.Err() != nil {
			return Inventory{}, ctx.Err()
		}
		g, err := l.device(i)
		if err != nil {
			// One GPU in trouble (fallen off the bus, needs a reset) must not hide the others.
			inv.Warnings = append(inv.Warnings, err.Error())
			continue
		}
		inv.GPUs = append(inv.GPUs, g)
	}
	inv.sort()
	return inv, nil
}

// device reads GPU i. Memory, UUID, name and index are required; utilisation and
// temperature are left nil when NVML does not give them.
func (l *nvmlLib) device(i uint32) (GPU, error) {
	var g GPU
	var dev uintptr
	if ret := l.handleByIndex(i, &dev); ret != nvmlSuccess {
		return g, fmt.Errorf("GPU %d: nvmlDeviceGetHandleByIndex: %s", i, l.describe(ret))
	}
	var index uint32
	if ret := l.index(dev, &index); ret != nvmlSuccess {
		return g, fmt.Errorf("GPU %d: nvmlDeviceGetIndex: %s", i, l.describe(ret))
	}
	g.Index = int(index)
	buf := make([]byte, max(nvmlUUIDBufferSize, nvmlNameBufferSize))
	if ret := l.uuid(dev, &buf[0], nvmlUUIDBufferSize); ret != nvmlSuccess {
		return g, fmt.Errorf("GPU %d: nvmlDeviceGetUUID: %s", index, l.describe(ret))
	}
	g.UUID = cString(buf)
	clear(buf)
	if ret := l.name(dev, &buf[0], nvmlNameBufferSize); ret != nvmlSuccess {
		return g, fmt.Errorf("GPU %d: nvmlDeviceGetName: %s", index, l.describe(ret))
	}
	g.Model = cString(buf)
	// v2 reports used memory without the driver's reservation, as nvidia-smi does; v1
	// counts the reservation as used. Fall back to v1 where v2 is missing or refused.
	m2 := nvmlMemoryV2{Version: nvmlMemoryV2Version}
	if l.memoryV2 != nil && l.memoryV2(dev, &m2) == nvmlSuccess {
		g.MemoryTotalBytes, g.MemoryUsedBytes = int64(m2.Total), int64(m2.Used)
	} else {
		var m nvmlMemory
		if ret := l.memory(dev, &m); ret != nvmlSuccess {
			return g, fmt.Errorf("GPU %d: nvmlDeviceGetMemoryInfo: %s", index, l.describe(ret))
		}
		g.MemoryTotalBytes, g.MemoryUsedBytes = int64(m.Total), int64(m.Used)
	}
	// Utilisation and temperature are optional: NVML_ERROR_NOT_SUPPORTED in MIG mode and on
	// some virtual GPUs.
	var u nvmlUtilization
	if ret := l.utilization(dev, &u); ret == nvmlSuccess {
		g.UtilizationPercent = ptr(int(u.GPU))
	}
	var t uint32
	if ret := l.temperature(dev, nvmlTemperatureGPU, &t); ret == nvmlSuccess {
		g.TemperatureCelsius = ptr(int(t))
	}
	return g, nil
}

// Close shuts NVML down if Detect initialised it. The library stays mapped (unloading a
// driver library from a running process is not worth its risks).
func (n *NVML) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.initialized {
		return nil
	}
	n.initialized = false
	if ret := n.lib.shutdown(); ret != nvmlSuccess {
		return fmt.Errorf("nvmlShutdown: %s", n.lib.describe(ret))
	}
	return nil
}

// cString is the NUL-terminated string at the start of buf.
func cString(buf []byte) string {
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		buf = buf[:i]
	}
	return string(buf)
}
