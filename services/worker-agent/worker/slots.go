package worker

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// DefaultSlots is the spec's default: 4 CPU slots per worker.
const DefaultSlots = "cpu=4"

var slotTypePattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// ParseSlots parses WORKER_SLOTS: "cpu=4,gpu=2" (typed), or a bare count "8" meaning
// cpu=8. Counts are 1..1024; each type appears once. "gpu=auto" gives gpu the count
// AutoSlots, which New replaces with the number of GPUs found.
func ParseSlots(s string) (map[string]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		s = DefaultSlots
	}
	if n, err := strconv.Atoi(s); err == nil {
		s = fmt.Sprintf("cpu=%d", n)
	}
	out := make(map[string]int)
	for _, part := range strings.Split(s, ",") {
		typ, count, ok := strings.Cut(strings.TrimSpace(part), "=")
		typ = strings.TrimSpace(typ)
		if !ok {
			return nil, fmt.Errorf("WORKER_SLOTS %q: %q must look like type=count, e.g. cpu=4,gpu=1", s, part)
		}
		if !slotTypePattern.MatchString(typ) {
			return nil, fmt.Errorf("WORKER_SLOTS %q: slot type %q must be lower-case letters, digits, '_' or '-', starting with a letter", s, typ)
		}
		if _, dup := out[typ]; dup {
			return nil, fmt.Errorf("WORKER_SLOTS %q: slot type %q appears twice", s, typ)
		}
		// GPU wiring (gpu.go): gpu=auto is one slot per GPU found, resolved by New.
		if typ == GPUSlotType && strings.TrimSpace(count) == "auto" {
			out[typ] = AutoSlots
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(count))
		if err != nil || n < 1 || n > 1024 {
			return nil, fmt.Errorf("WORKER_SLOTS %q: count of %q must be a whole number from 1 to 1024%s", s, typ, autoHint(typ))
		}
		out[typ] = n
	}
	return out, nil
}

// FormatSlots is the inverse of ParseSlots, in type order.
func FormatSlots(slots map[string]int) string {
	types := make([]string, 0, len(slots))
	for t := range slots {
		types = append(types, t)
	}
	sort.Strings(types)
	parts := make([]string, len(types))
	for i, t := range types {
		parts[i] = fmt.Sprintf("%s=%d", t, slots[t])
		if slots[t] == AutoSlots {
			parts[i] = t + "=auto"
		}
	}
	return strings.Join(parts, ",")
}
