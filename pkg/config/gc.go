package config

import (
	"os"
	"runtime/debug"
)

// GCPercent is the garbage collector's target of the services (heap growth allowed
// between collections, in percent of the live heap) unless GOGC says otherwise.
//
// Go's default of 100 made garbage collection about 6 % of the all-in-one server's CPU
// under sustained load (perf of benchall's sustained workload): the request path
// allocates per run (protobuf messages, pgx rows, JSON) while the live heap stays small
// (tens of MB), so the collector ran very often. At 400 the heap may grow to five times
// the live heap before a collection; docs/performance-history.md has the measurement.
const GCPercent = 400

// ApplyGCPercent sets the garbage collector's target to GCPercent unless the GOGC
// environment variable is set (a non-empty GOGC, "off" included, is the operator's and
// is left as the runtime read it). It returns the target in effect.
func ApplyGCPercent() int {
	if v, ok := os.LookupEnv("GOGC"); ok && v != "" {
		cur := debug.SetGCPercent(100)
		debug.SetGCPercent(cur)
		return cur
	}
	debug.SetGCPercent(GCPercent)
	return GCPercent
}
