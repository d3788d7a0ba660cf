package gpu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// SMIQuery is the field list SMI asks nvidia-smi for, in the order ParseSMI reads it.
const SMIQuery = "index,uuid,name,memory.total,memory.used,utilization.gpu,temperature.gpu"

// smiArgs are the arguments SMI runs nvidia-smi with.
var smiArgs = []string{"--query-gpu=" + SMIQuery, "--format=csv,noheader,nounits"}

// DefaultSMITimeout bounds one nvidia-smi run: a wedged driver can make it hang.
const DefaultSMITimeout = 15 * time.Second

// smiNoDevices is what nvidia-smi prints (exit status 6) when the driver works but sees no
// GPU.
const smiNoDevices = "No devices were found"

// SMI reads the inventory by running nvidia-smi. It costs a process start per Detect (tens
// to hundreds of milliseconds), so NVML is preferred where it loads.
type SMI struct {
	// Path is the nvidia-smi program; "" looks "nvidia-smi" up on PATH.
	Path string
	// Timeout bounds one run; 0 means DefaultSMITimeout.
	Timeout time.Duration
}

// Detect implements Detector.
func (s *SMI) Detect(ctx context.Context) (Inventory, error) {
	path := s.Path
	if path == "" {
		path = "nvidia-smi"
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultSMITimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, smiArgs...)
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	if errors.Is(runErr, exec.ErrNotFound) {
		return Inventory{}, fmt.Errorf("%w: %s not found on PATH", ErrNoDriver, path)
	}
	if ctx.Err() != nil {
		return Inventory{}, fmt.Errorf("%w: %s did not answer within %s", ErrNoDriver, path, timeout)
	}
	var exitErr *exec.ExitError
	if runErr != nil && !errors.As(runErr, &exitErr) {
		return Inventory{}, fmt.Errorf("%w: running %s: %v", ErrNoDriver, path, runErr)
	}
	inv := Inventory{Source: SourceSMI}
	gpus, notes, err := ParseSMI(stdout.Bytes())
	if err != nil {
		return Inventory{}, fmt.Errorf("reading the output of %s %s: %w", path, strings.Join(smiArgs, " "), err)
	}
	inv.GPUs = gpus
	said := strings.TrimSpace(strings.Join(append(notes, strings.TrimSpace(stderr.String())), "\n"))
	if runErr != nil {
		// nvidia-smi exits non-zero both when the driver is unusable and when one GPU of
		// several cannot be read; keep what it could read.
		switch {
		case len(gpus) > 0:
			inv.Warnings = append(inv.Warnings, fmt.Sprintf("%s exited with status %d: %s", path, exitErr.ExitCode(), said))
		case strings.Contains(said, smiNoDevices):
			// The driver works and sees no GPU: an empty inventory, not a missing driver.
		default:
			if said == "" {
				said = "no output"
			}
			return Inventory{}, fmt.Errorf("%w: %s exited with status %d: %s", ErrNoDriver, path, exitErr.ExitCode(), said)
		}
	} else if len(notes) > 0 {
		inv.Warnings = append(inv.Warnings, notes...)
	}
	inv.sort()
	return inv, nil
}

// Close does nothing: SMI holds nothing between runs.
func (*SMI) Close() error { return nil }

// ParseSMI parses the output of `nvidia-smi --query-gpu=<SMIQuery>
// --format=csv,noheader,nounits`: one line per GPU, fields separated by ", ". It accepts
// the values nvidia-smi prints for what it cannot read ("[N/A]", "[Not Supported]", any
// "[…]", "N/A"), units left in ("81920 MiB", "35 %"), trailing whitespace and CRLF line ends,
// and model names that contain commas. Lines that are not GPU records (nvidia-smi's own
// messages, such as "Unable to determine the device handle for GPU…": they do not start with
// an index and a comma) come back as notes. A record with a missing UUID or a malformed
// number is an error.
func ParseSMI(out []byte) (gpus []GPU, notes []string, err error) {
	for n, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		fields := strings.Split(line, ",")
		for i := range fields {
			fields[i] = strings.TrimSpace(fields[i])
		}
		if _, err := strconv.Atoi(fields[0]); err != nil || len(fields) < 7 {
			notes = append(notes, line)
			continue
		}
		g, err := parseSMIRecord(fields)
		if err != nil {
			return nil, nil, fmt.Errorf("line %d %q: %w", n+1, line, err)
		}
		gpus = append(gpus, g)
	}
	return gpus, notes, nil
}

func parseSMIRecord(f []string) (GPU, error) {
	var g GPU
	index, _ := strconv.Atoi(f[0]) // checked by ParseSMI
	if index < 0 {
		return g, fmt.Errorf("index %q is not a GPU index", f[0])
	}
	g.Index = index
	if g.UUID = f[1]; unknown(g.UUID) {
		return g, fmt.Errorf("GPU %d has no UUID (%q)", index, g.UUID)
	}
	// Only the name may contain a comma: it is everything between the UUID and the last four
	// (numeric) fields.
	k := len(f)
	g.Model = strings.Join(f[2:k-4], ", ")
	total, _, err := quantity(f[k-4], "memory.total", "MiB")
	if err != nil {
		return g, err
	}
	used, _, err := quantity(f[k-3], "memory.used", "MiB")
	if err != nil {
		return g, err
	}
	g.MemoryTotalBytes, g.MemoryUsedBytes = total<<20, used<<20
	util, ok, err := quantity(f[k-2], "utilization.gpu", "%")
	if err != nil {
		return g, err
	}
	if ok {
		g.UtilizationPercent = ptr(int(util))
	}
	temp, ok, err := quantity(f[k-1], "temperature.gpu", "C")
	if err != nil {
		return g, err
	}
	if ok {
		g.TemperatureCelsius = ptr(int(temp))
	}
	return g, nil
}

// unknown reports whether v is how nvidia-smi says it has no value.
func unknown(v string) bool {
	return v == "" || strings.EqualFold(v, "N/A") || (strings.HasPrefix(v, "[") && strings.HasSuffix(v, "]"))
}

// quantity parses a whole, non-negative number with an optional unit; ok is false for an
// unknown value.
func quantity(v, field, unit string) (n int64, ok bool, err error) {
	if unknown(v) {
		return 0, false, nil
	}
	num := strings.TrimSpace(strings.TrimSuffix(v, unit))
	n, err = strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, false, fmt.Errorf("%s %q is not a whole number of %s", field, v, unit)
	}
	return n, true, nil
}

func ptr[T any](v T) *T { return &v }
