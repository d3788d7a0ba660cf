package simulate

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Arrival is one row of a trace: Runs runs of one slot type arriving at At, each
// running for Duration once placed.
type Arrival struct {
	// At is the arrival time from the start of the trace.
	At time.Duration
	// Runs is how many runs arrive.
	Runs int
	// Duration is how long each run executes.
	Duration time.Duration
	// SlotType the runs need.
	SlotType string
	// Line is the row's line in the CSV file.
	Line int
}

// traceColumns are the trace's columns, in any order, named by the header row.
var traceColumns = []string{"time_s", "runs", "duration_s", "slot_type"}

// maxTraceRuns bounds a trace, so a typo cannot make the simulator run out of memory.
const maxTraceRuns = 10_000_000

// ParseTrace reads an arrival trace: CSV with a header row naming the columns time_s,
// runs, duration_s and slot_type (in any order; other columns are ignored), then one
// row per arrival. Lines starting with '#' are comments. Rows may come in any order;
// they are returned sorted by time (stable). Errors name the line and the column.
func ParseTrace(r io.Reader) ([]Arrival, error) {
	cr := csv.NewReader(r)
	cr.Comment = '#'
	cr.FieldsPerRecord = -1
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, errors.New("trace: empty: want a header row time_s,runs,duration_s,slot_type")
	}
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.ToLower(strings.TrimSpace(h))] = i
	}
	for _, c := range traceColumns {
		if _, ok := col[c]; !ok {
			return nil, fmt.Errorf("trace: header: missing column %q (want time_s,runs,duration_s,slot_type)", c)
		}
	}
	var out []Arrival
	total := 0
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("trace: %w", err)
		}
		line, _ := cr.FieldPos(0)
		field := func(name string) (string, error) {
			i := col[name]
			if i >= len(rec) {
				return "", fmt.Errorf("trace line %d: %s: missing", line, name)
			}
			return strings.TrimSpace(rec[i]), nil
		}
		seconds := func(name string, positive bool) (time.Duration, error) {
			s, err := field(name)
			if err != nil {
				return 0, err
			}
			v, err := strconv.ParseFloat(s, 64)
			switch {
			case err != nil || math.IsNaN(v) || math.IsInf(v, 0):
				return 0, fmt.Errorf("trace line %d: %s: want seconds, got %q", line, name, s)
			case v < 0 || (positive && v == 0):
				return 0, fmt.Errorf("trace line %d: %s: must be %s (got %s)", line, name, map[bool]string{true: "> 0", false: ">= 0"}[positive], s)
			case v > 365*24*3600:
				return 0, fmt.Errorf("trace line %d: %s: more than a year (got %s)", line, name, s)
			}
			return time.Duration(math.Round(v * float64(time.Second))), nil
		}
		a := Arrival{Line: line}
		if a.At, err = seconds("time_s", false); err != nil {
			return nil, err
		}
		if a.Duration, err = seconds("duration_s", true); err != nil {
			return nil, err
		}
		s, err := field("runs")
		if err != nil {
			return nil, err
		}
		if a.Runs, err = strconv.Atoi(s); err != nil || a.Runs < 0 {
			return nil, fmt.Errorf("trace line %d: runs: want a count >= 0, got %q", line, s)
		}
		if a.SlotType, err = field("slot_type"); err != nil {
			return nil, err
		}
		if a.SlotType == "" {
			return nil, fmt.Errorf("trace line %d: slot_type: required", line)
		}
		total += a.Runs
		if total > maxTraceRuns {
			return nil, fmt.Errorf("trace line %d: more than %d runs in all", line, maxTraceRuns)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, errors.New("trace: no rows after the header")
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].At < out[j].At })
	return out, nil
}
