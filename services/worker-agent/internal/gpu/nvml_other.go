//go:build !(linux && (amd64 || arm64)) || nonvml

package gpu

import (
	"context"
	"fmt"
	"runtime"
)

// DefaultNVMLLibrary is the NVML library NewNVML would load where NVML is built in.
const DefaultNVMLLibrary = "libnvidia-ml.so.1"

// NVML is the NVML detector of builds without NVML support (platforms purego cannot dlopen
// on without cgo, or the nonvml build tag): Detect always fails with ErrNoDriver, so Auto
// falls back to nvidia-smi.
type NVML struct{}

// NewNVML returns the stand-in NVML detector of this build.
func NewNVML(string) *NVML { return &NVML{} }

// Detect implements Detector; it always fails.
func (*NVML) Detect(context.Context) (Inventory, error) {
	return Inventory{}, fmt.Errorf("%w: NVML support is not built into this binary (%s/%s)", ErrNoDriver, runtime.GOOS, runtime.GOARCH)
}

// Close does nothing.
func (*NVML) Close() error { return nil }
