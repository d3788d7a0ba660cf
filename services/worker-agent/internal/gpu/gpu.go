// Package gpu discovers the NVIDIA GPUs of the machine a worker-agent runs on, through the
// driver's own interfaces: NVML (libnvidia-ml.so.1, loaded at run time without cgo, so the
// binary starts and builds on machines without a driver) and, when NVML cannot be used, the
// CSV output of `nvidia-smi --query-gpu`.
//
// It owns talking to the NVIDIA driver and turning what the driver says into GPU values:
// index, UUID, model, memory, utilisation and temperature. A missing or broken driver is an
// error value wrapping ErrNoDriver, never a panic or an exit.
//
// It must never change GPU state (no clocks, modes, persistence or resets: read-only
// queries only), never decide which GPU a run gets or how many slots a worker has (package
// worker does), and never talk to the scheduler.
package gpu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// ErrNoDriver is wrapped by the errors of detectors that found no usable NVIDIA driver: the
// NVML library or nvidia-smi is missing, or present but unable to talk to the kernel driver.
var ErrNoDriver = errors.New("no usable NVIDIA driver")

// Sources of an Inventory.
const (
	// SourceNVML: the inventory came from NVML.
	SourceNVML = "nvml"
	// SourceSMI: the inventory came from nvidia-smi.
	SourceSMI = "nvidia-smi"
	// SourceAuto selects NVML, else nvidia-smi (NewDetector only).
	SourceAuto = "auto"
)

// GPU is one NVIDIA GPU as the driver reports it.
type GPU struct {
	// Index is the driver's index of the GPU (nvidia-smi's and NVML's order, by PCI bus id;
	// not necessarily CUDA's default order, which is why runs get UUIDs).
	Index int `json:"index"`
	// UUID is the GPU's UUID, "GPU-…"; it is what CUDA_VISIBLE_DEVICES names.
	UUID string `json:"uuid"`
	// Model is the product name, e.g. "NVIDIA A100-SXM4-80GB".
	Model string `json:"model"`
	// MemoryTotalBytes is the GPU's memory; 0 when the driver does not say.
	MemoryTotalBytes int64 `json:"memory_total_bytes"`
	// MemoryUsedBytes is the memory in use (by any process); 0 when the driver does not say.
	MemoryUsedBytes int64 `json:"memory_used_bytes"`
	// UtilizationPercent is the GPU's utilisation over the driver's last sample period; nil
	// when the driver does not report it (e.g. MIG mode, some virtual GPUs).
	UtilizationPercent *int `json:"utilization_percent"`
	// TemperatureCelsius is the GPU die temperature; nil when not reported.
	TemperatureCelsius *int `json:"temperature_celsius"`
}

// MemoryFreeBytes is the memory not in use, never negative.
func (g GPU) MemoryFreeBytes() int64 { return max(g.MemoryTotalBytes-g.MemoryUsedBytes, 0) }

// String describes the GPU in one line, for messages.
func (g GPU) String() string {
	return fmt.Sprintf("%d: %s %s (%d MiB)", g.Index, g.Model, g.UUID, g.MemoryTotalBytes>>20)
}

// Inventory is what one detection found.
type Inventory struct {
	// Source is SourceNVML or SourceSMI.
	Source string `json:"source"`
	// DriverVersion is the driver's version when the source reports it (NVML does).
	DriverVersion string `json:"driver_version,omitempty"`
	// GPUs are the GPUs found, in index order.
	GPUs []GPU `json:"gpus"`
	// Warnings are problems with single GPUs that were left out (e.g. a GPU that fell off the
	// bus) while the others were read.
	Warnings []string `json:"warnings,omitempty"`
}

// Describe lists the GPUs found in one line, for messages.
func (inv Inventory) Describe() string {
	if len(inv.GPUs) == 0 {
		return "no GPUs"
	}
	parts := make([]string, len(inv.GPUs))
	for i, g := range inv.GPUs {
		parts[i] = g.String()
	}
	return fmt.Sprintf("%d GPU(s): %s", len(inv.GPUs), strings.Join(parts, "; "))
}

func (inv *Inventory) sort() {
	slices.SortStableFunc(inv.GPUs, func(a, b GPU) int { return a.Index - b.Index })
}

// Detector reads the GPU inventory. Detect may be called repeatedly (workers re-read memory
// and utilisation every few seconds), but not concurrently.
type Detector interface {
	Detect(ctx context.Context) (Inventory, error)
}

// NewDetector returns the detector for source: SourceAuto (or "") tries NVML, then
// nvidia-smi; SourceNVML and SourceSMI use only that one. The caller closes it.
func NewDetector(source string) (interface {
	Detector
	io.Closer
}, error) {
	switch source {
	case "", SourceAuto:
		return &Auto{NVML: NewNVML(""), SMI: &SMI{}}, nil
	case SourceNVML:
		return NewNVML(""), nil
	case SourceSMI:
		return &SMI{}, nil
	}
	return nil, fmt.Errorf("GPU discovery %q: must be %s, %s or %s", source, SourceAuto, SourceNVML, SourceSMI)
}

// Auto reads the inventory through NVML when the library loads and initialises, else
// through nvidia-smi.
type Auto struct {
	// NVML is tried first.
	NVML *NVML
	// SMI is the fallback.
	SMI *SMI
}

// Detect implements Detector. When neither source works, the error wraps ErrNoDriver and
// says why each one failed.
func (a *Auto) Detect(ctx context.Context) (Inventory, error) {
	inv, nerr := a.NVML.Detect(ctx)
	if nerr == nil {
		return inv, nil
	}
	inv, serr := a.SMI.Detect(ctx)
	if serr == nil {
		return inv, nil
	}
	return Inventory{}, fmt.Errorf("%w: NVML: %s; nvidia-smi: %s", ErrNoDriver, detail(nerr), detail(serr))
}

// Close releases NVML.
func (a *Auto) Close() error { return a.NVML.Close() }

// detail is err's message without the ErrNoDriver prefix, so that joined messages say it once.
func detail(err error) string {
	return strings.TrimPrefix(err.Error(), ErrNoDriver.Error()+": ")
}
