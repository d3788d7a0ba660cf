package cli

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// Percentiles summarises a latency distribution in milliseconds. Percentiles use the
// nearest-rank method: p is the smallest sample that at least p % of the samples do not
// exceed, so every figure is a latency that was really observed.
type Percentiles struct {
	// P50, P95, P99 and Max are in milliseconds.
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
	// N is how many samples the figures summarise.
	N int `json:"n"`
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of sorted, or 0 when
// sorted is empty.
func percentile(sorted []float64, p float64) float64 {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// summarize sorts samples in place and returns their percentiles.
func summarize(samples []float64) Percentiles {
	slices.Sort(samples)
	if len(samples) == 0 {
		return Percentiles{}
	}
	return Percentiles{
		P50: percentile(samples, 50),
		P95: percentile(samples, 95),
		P99: percentile(samples, 99),
		Max: samples[len(samples)-1],
		N:   len(samples),
	}
}

// ms converts a duration to fractional milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// rate is count per second over d; 0 when d is not positive.
func rate(count int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(count) / d.Seconds()
}

// ProcessCPU is the CPU time a group of processes used during the measured window.
type ProcessCPU struct {
	// Name of the group: agentserver, postgres, agentserver-children (the executors),
	// agentctl, or a name given with --pids.
	Name string `json:"name"`
	// PIDs are the processes seen in the group at the end of the window.
	PIDs []int `json:"pids"`
	// UserS and SysS are user and system CPU seconds, children reaped by the group
	// included.
	UserS float64 `json:"user_s"`
	SysS  float64 `json:"sys_s"`
	// CPUS is the group's CPU seconds: per process the larger of its ticks (UserS + SysS
	// count whole 10 ms ticks per process, which under-counts many short-lived processes)
	// and its main thread's exact run time (/proc/<pid>/schedstat), which is the whole
	// process's for a single-threaded one; reaped children by their ticks.
	CPUS float64 `json:"cpu_s"`
	// Cores is CPUS divided by the window's wall time: 1.0 is one core busy all along.
	Cores float64 `json:"cores"`
	// PerRunUS is CPUS per completed run, in microseconds.
	PerRunUS float64 `json:"per_run_us"`
}

// MachineCPU is the whole machine's CPU during the window (/proc/stat): every process's
// and the kernel's, whoever they served. Set beside the groups of CPU, it tells how busy
// the machine was (BusyCores against CPUs) and how much of that the groups account for.
type MachineCPU struct {
	// CPUs is the number of CPUs the machine has.
	CPUs int `json:"cpus"`
	// BusyS is the CPU seconds the machine spent not idle, over all its CPUs.
	BusyS float64 `json:"busy_s"`
	// BusyCores is BusyS divided by the window's wall time: CPUs means never idle.
	BusyCores float64 `json:"busy_cores"`
	// PerRunUS is BusyS per completed run, in microseconds.
	PerRunUS float64 `json:"per_run_us"`
}

// BenchReport is the outcome of one agentctl bench: what --json prints, as one object.
type BenchReport struct {
	// Mode is "rate", "concurrency" or "burndown".
	Mode string `json:"mode"`
	// Assistant is the assistant the runs executed.
	Assistant string `json:"assistant"`
	// OfferedRatePerS is --rate in rate mode, else 0.
	OfferedRatePerS float64 `json:"offered_rate_per_s,omitempty"`
	// Concurrency is the number of concurrent creators (concurrency mode) or batch
	// creators (burndown).
	Concurrency int `json:"concurrency,omitempty"`
	// Threads is --threads: how many threads the runs were created on in turn (0: none).
	Threads int `json:"threads,omitempty"`
	// DurationS is --duration in seconds for rate and concurrency mode.
	DurationS float64 `json:"duration_s,omitempty"`
	// Created counts runs the server accepted; Completed those that ended SUCCEEDED within
	// the window that throughput is measured over.
	Created   int `json:"created"`
	Completed int `json:"completed"`
	// ThroughputPerS is Completed divided by WindowS.
	ThroughputPerS float64 `json:"throughput_per_s"`
	// WindowS is the measured window in seconds, on the server's clock: from the first
	// run's create_time (burndown: from the release of the queued runs) to the last run's
	// end_time.
	WindowS float64 `json:"window_s"`
	// CreateRatePerS is how fast the runs were created: Created divided by the client's
	// time from the first create call to the last answer.
	CreateRatePerS float64 `json:"create_rate_per_s"`
	// EnqueueToStartMS is start_time - create_time of every finished run.
	EnqueueToStartMS Percentiles `json:"enqueue_to_start_ms"`
	// EnqueueToCompleteMS is end_time - create_time of every finished run.
	EnqueueToCompleteMS Percentiles `json:"enqueue_to_complete_ms"`
	// CreateCallMS is the client-side latency of each CreateRun or BatchCreateRuns call.
	CreateCallMS Percentiles `json:"create_call_ms"`
	// GatewayMS is the answering gateway's own time for the unary calls it served (its
	// GatewayStatsService, read before the runs are listed): beside CreateCallMS it splits
	// a create call between the gateway's handler and the transport both ways. Absent for
	// a burn-down and when the gateway did not answer.
	GatewayMS *GatewayLatency `json:"gateway_ms,omitempty"`
	// Errors counts failed calls (per run they would have created), runs that ended other
	// than SUCCEEDED and runs that did not finish in time; ErrorKinds breaks it down.
	Errors     int            `json:"errors"`
	ErrorKinds map[string]int `json:"error_kinds"`
	// CPU is the CPU time of each process group during the window.
	CPU []ProcessCPU `json:"cpu"`
	// Machine is the whole machine's CPU during the same window (absent without /proc).
	Machine *MachineCPU `json:"machine,omitempty"`
}

// GatewayLatency is what a gateway measured of its own unary calls over its window: the
// last WindowS seconds, at most its last 65,536 calls (WaitRun excluded). Under load nearly
// all of them are the bench's create calls; a few are its other calls, or other clients'.
type GatewayLatency struct {
	WindowS float64 `json:"window_s"`
	P50     float64 `json:"p50"`
	P95     float64 `json:"p95"`
	P99     float64 `json:"p99"`
	N       int64   `json:"n"`
}

// printText writes r for people.
func (r *BenchReport) printText(w io.Writer) error {
	var b strings.Builder
	switch r.Mode {
	case benchModeRate:
		fmt.Fprintf(&b, "workload:    %.0f runs/s offered for %s, one CreateRun per run\n", r.OfferedRatePerS, seconds(r.DurationS))
	case benchModeConcurrency:
		fmt.Fprintf(&b, "workload:    %d concurrent creators for %s, one CreateRun per run\n", r.Concurrency, seconds(r.DurationS))
	case benchModeBurndown:
		fmt.Fprintf(&b, "workload:    burn-down of %d runs created with BatchCreateRuns\n", r.Created)
	}
	fmt.Fprintf(&b, "assistant:   %s\n", r.Assistant)
	if r.Threads > 0 {
		fmt.Fprintf(&b, "threads:     %d, a run on each in turn (multitask enqueue)\n", r.Threads)
	}
	fmt.Fprintf(&b, "runs:        %d created, %d completed, %d errors\n", r.Created, r.Completed, r.Errors)
	fmt.Fprintf(&b, "throughput:  %.1f runs/s over %s (server clock)\n", r.ThroughputPerS, seconds(r.WindowS))
	fmt.Fprintf(&b, "create rate: %.1f runs/s\n", r.CreateRatePerS)
	tw := newTable(&b)
	fmt.Fprintln(tw, "latency (ms)\tp50\tp95\tp99\tmax\tn")
	for _, row := range []struct {
		name string
		p    Percentiles
	}{
		{"enqueue→start", r.EnqueueToStartMS},
		{"enqueue→complete", r.EnqueueToCompleteMS},
		{"create call", r.CreateCallMS},
	} {
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.2f\t%d\n", row.name, row.p.P50, row.p.P95, row.p.P99, row.p.Max, row.p.N)
	}
	if g := r.GatewayMS; g != nil {
		// Its window's calls, not exactly the bench's: see GatewayLatency.
		fmt.Fprintf(tw, "gateway handler\t%.2f\t%.2f\t%.2f\t-\t%d\n", g.P50, g.P95, g.P99, g.N)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.CPU) > 0 {
		tw = newTable(&b)
		fmt.Fprintln(tw, "cpu\tseconds\tcores\tper run\tpids")
		for _, c := range r.CPU {
			fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.0f µs\t%d\n", c.Name, c.CPUS, c.Cores, c.PerRunUS, len(c.PIDs))
		}
		if m := r.Machine; m != nil {
			fmt.Fprintf(tw, "machine (%d CPUs)\t%.2f\t%.2f\t%.0f µs\tall, and the kernel\n", m.CPUs, m.BusyS, m.BusyCores, m.PerRunUS)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if r.Errors > 0 {
		b.WriteString("errors:\n")
		for _, k := range slices.Sorted(maps.Keys(r.ErrorKinds)) {
			fmt.Fprintf(&b, "  %6d  %s\n", r.ErrorKinds[k], k)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func seconds(s float64) string {
	return (time.Duration(s * float64(time.Second))).Round(time.Millisecond).String()
}

// runTimes are the server timestamps of one run that the report is computed from.
type runTimes struct {
	create, start, end time.Time
	succeeded          bool
}

// latencies computes the report's figures from the runs' own timestamps. Throughput counts
// the runs that SUCCEEDED with an end_time not before from, over the window from from to the
// last such end_time; a zero from means the earliest create_time.
func latencies(runs []runTimes, from time.Time) (completed int, window time.Duration, toStart, toComplete Percentiles) {
	var starts, completes []float64
	var last time.Time
	if from.IsZero() && len(runs) > 0 {
		from = slices.MinFunc(runs, func(a, b runTimes) int { return a.create.Compare(b.create) }).create
	}
	for _, r := range runs {
		if !r.start.IsZero() {
			starts = append(starts, ms(r.start.Sub(r.create)))
		}
		if !r.succeeded || r.end.IsZero() {
			continue
		}
		completes = append(completes, ms(r.end.Sub(r.create)))
		if r.end.Before(from) {
			continue
		}
		completed++
		last = maxTime(last, r.end)
	}
	if completed > 0 {
		window = last.Sub(from)
	}
	return completed, window, summarize(starts), summarize(completes)
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
