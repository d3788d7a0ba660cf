package gpu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
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

// smiFields are the field names of SMIQuery, in its order.
var smiFields = strings.Split(SMIQuery, ",")

// ParseSMI parses the output of `nvidia-smi --query-gpu=<SMIQuery>
// --format=csv,noheader,nounits`: one line per GPU, fields separated by ", ". It accepts
// the values nvidia-smi prints for what it cannot read ("[N/A]", "[Not Supported]", any
// "[…]", "N/A"), units left in ("81920 MiB", "35 %"), trailing whitespace and CRLF line ends,
// and model names that contain commas. Lines that are not GPU records (nvidia-smi's own
// messages, such as "Unable to determine the device handle for GPU…": they do not start with
// an index and a comma) come back as notes. A record with a missing UUID, a malformed number
// or fewer fields than the query asks for is an error.
//
// It also reads output with a header line (`--format=csv` without noheader, e.g.
// "index, uuid, name, memory.total [MiB], …"): from a header on, the columns are found by
// name, so the fields may come in any order and among any others (an output of a longer
// --query-gpu list), as long as every field of SMIQuery is there. A header that lacks one is
// an error, and so is a record under a header with a different number of fields than the
// header names (model names with commas cannot be told apart from extra columns there).
func ParseSMI(out []byte) (gpus []GPU, notes []string, err error) {
	var columns []int // with a header: where each field of SMIQuery is; nil without
	width := 0        // with a header: how many fields it names
	for n, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		fields := strings.Split(line, ",")
		for i := range fields {
			fields[i] = strings.TrimSpace(fields[i])
		}
		if names, ok := smiHeader(fields); ok {
			if columns, err = smiColumns(names); err != nil {
				return nil, nil, fmt.Errorf("line %d %q: %w", n+1, line, err)
			}
			width = len(names)
			continue
		}
		var g GPU
		switch {
		case columns != nil && len(fields) == 1:
			// A message among records ("Unable to determine the device handle for …").
			notes = append(notes, line)
			continue
		case columns != nil && len(fields) != width:
			return nil, nil, fmt.Errorf("line %d %q: %d fields, the header names %d", n+1, line, len(fields), width)
		case columns != nil:
			record := make([]string, len(columns))
			for i, c := range columns {
				record[i] = fields[c]
			}
			if _, err := strconv.Atoi(record[0]); err != nil {
				return nil, nil, fmt.Errorf("line %d %q: index %q is not a GPU index", n+1, line, record[0])
			}
			g, err = parseSMIRecord(record)
		default:
			if _, err := strconv.Atoi(fields[0]); err != nil {
				notes = append(notes, line)
				continue
			}
			if len(fields) < len(smiFields) {
				return nil, nil, fmt.Errorf("line %d %q: %d fields, the query (%s) asks for %d", n+1, line, len(fields), SMIQuery, len(smiFields))
			}
			g, err = parseSMIRecord(fields)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("line %d %q: %w", n+1, line, err)
		}
		gpus = append(gpus, g)
	}
	return gpus, notes, nil
}

// smiHeader reports whether fields are a CSV header of nvidia-smi ("index, uuid, name,
// memory.total [MiB], …") and returns the field names without their units.
func smiHeader(fields []string) ([]string, bool) {
	names := make([]string, len(fields))
	for i, f := range fields {
		if j := strings.Index(f, " ["); j > 0 && strings.HasSuffix(f, "]") {
			f = f[:j] // "memory.total [MiB]"
		}
		if f == "" || !isFieldName(f) {
			return nil, false
		}
		names[i] = f
	}
	return names, slices.Contains(names, "index") || slices.Contains(names, "uuid")
}

// isFieldName reports whether f looks like a --query-gpu field name: letters, digits, '_'
// and '.', starting with a letter.
func isFieldName(f string) bool {
	for i, r := range f {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case i > 0 && (r >= '0' && r <= '9' || r == '_' || r == '.'):
		default:
			return false
		}
	}
	return true
}

// smiColumns finds the fields of SMIQuery among the names of a header.
func smiColumns(names []string) ([]int, error) {
	columns := make([]int, len(smiFields))
	var missing []string
	for i, f := range smiFields {
		if columns[i] = slices.Index(names, f); columns[i] < 0 {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("the header has no column for %s (the fields of %s are needed)", strings.Join(missing, ", "), SMIQuery)
	}
	return columns, nil
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
