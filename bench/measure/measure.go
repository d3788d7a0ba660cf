// Package measure holds what the benchmarks of agentserver and of its River baseline have in
// common: the result of one workload (the JSON object agentctl bench --json prints), latency
// percentiles, and the CPU time of processes read from /proc.
//
// It measures; it never drives a workload, and it must keep the JSON field names of
// agentctl bench, which benchall decodes into Result.
package measure

import (
	"bytes"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Percentiles summarises latencies in milliseconds (nearest-rank method, like agentctl).
type Percentiles struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
	N   int     `json:"n"`
}

// Summarize sorts samples in place and returns their percentiles.
func Summarize(samples []float64) Percentiles {
	slices.Sort(samples)
	n := len(samples)
	if n == 0 {
		return Percentiles{}
	}
	at := func(p float64) float64 {
		rank := min(max(int(math.Ceil(p/100*float64(n))), 1), n)
		return samples[rank-1]
	}
	return Percentiles{P50: at(50), P95: at(95), P99: at(99), Max: samples[n-1], N: n}
}

// ProcessCPU is the CPU time of one process group over a workload.
type ProcessCPU struct {
	Name     string  `json:"name"`
	CPUS     float64 `json:"cpu_s"`
	Cores    float64 `json:"cores"`
	PerRunUS float64 `json:"per_run_us"`
}

// Result is the outcome of one workload: the fields of agentctl bench --json that the
// comparison uses, and what the River baseline fills in the same way.
type Result struct {
	ThroughputPerS      float64        `json:"throughput_per_s"`
	WindowS             float64        `json:"window_s"`
	Created             int            `json:"created"`
	Completed           int            `json:"completed"`
	CreateRatePerS      float64        `json:"create_rate_per_s"`
	EnqueueToStartMS    Percentiles    `json:"enqueue_to_start_ms"`
	EnqueueToCompleteMS Percentiles    `json:"enqueue_to_complete_ms"`
	Errors              int            `json:"errors"`
	ErrorKinds          map[string]int `json:"error_kinds,omitempty"`
	CPU                 []ProcessCPU   `json:"cpu"`
	// Machine is the whole machine's CPU over the same window as CPU (agentctl bench's
	// "machine" object).
	Machine *MachineCPU `json:"machine,omitempty"`
}

// MachineCPU is the whole machine's CPU over a workload (/proc/stat): every process's and
// the kernel's, whoever they served.
type MachineCPU struct {
	CPUs      int     `json:"cpus"`
	BusyS     float64 `json:"busy_s"`
	BusyCores float64 `json:"busy_cores"`
	PerRunUS  float64 `json:"per_run_us"`
}

// Times are the server timestamps of one job or run.
type Times struct {
	Create, Start, End time.Time
}

// Compute fills the throughput and latency fields of r from the jobs' timestamps: the
// throughput counts jobs that ended at or after from (zero: the earliest creation) over
// the window from from to the last end.
func (r *Result) Compute(jobs []Times, from time.Time) {
	var starts, completes []float64
	var last time.Time
	if from.IsZero() {
		for _, j := range jobs {
			if from.IsZero() || j.Create.Before(from) {
				from = j.Create
			}
		}
	}
	r.Created, r.Completed = len(jobs), 0
	for _, j := range jobs {
		if !j.Start.IsZero() {
			starts = append(starts, float64(j.Start.Sub(j.Create))/float64(time.Millisecond))
		}
		if j.End.IsZero() {
			continue
		}
		completes = append(completes, float64(j.End.Sub(j.Create))/float64(time.Millisecond))
		if j.End.Before(from) {
			continue
		}
		r.Completed++
		if j.End.After(last) {
			last = j.End
		}
	}
	r.EnqueueToStartMS, r.EnqueueToCompleteMS = Summarize(starts), Summarize(completes)
	if r.Completed > 0 && last.After(from) {
		r.WindowS = last.Sub(from).Seconds()
		r.ThroughputPerS = float64(r.Completed) / r.WindowS
	}
}

// userHZ is the unit of CPU times in /proc/<pid>/stat (USER_HZ, 100 on Linux).
const userHZ = 100

type procStat struct {
	pid, ppid int
	comm      string
	// cpuNS is the process's CPU time in nanoseconds, as agentctl bench counts it: the
	// larger of its own ticks (every thread, whole 10 ms ticks) and its main thread's exact
	// run time (/proc/<pid>/schedstat; the whole process's for a single-threaded one, such
	// as a PostgreSQL backend), plus the ticks of the children it reaped.
	cpuNS uint64
}

func readProcs() map[int]procStat {
	out := make(map[int]procStat)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		open, closing := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || closing < open {
			continue
		}
		f := strings.Fields(string(b[closing+1:]))
		if len(f) < 15 {
			continue
		}
		st := procStat{pid: pid, comm: string(b[open+1 : closing])}
		st.ppid, _ = strconv.Atoi(f[1])
		tick := func(i int) uint64 {
			v, _ := strconv.ParseUint(f[i], 10, 64)
			return v * (1e9 / userHZ)
		}
		var run uint64
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "schedstat")); err == nil {
			if sf := strings.Fields(string(b)); len(sf) > 0 {
				run, _ = strconv.ParseUint(sf[0], 10, 64)
			}
		}
		st.cpuNS = max(tick(11)+tick(12), run) + tick(13) + tick(14)
		out[pid] = st
	}
	return out
}

// CPUSample is the CPU time, in nanoseconds, of named process trees at one instant, and the
// whole machine's.
type CPUSample struct {
	procs map[string]uint64
	// busyTicks is the machine's non-idle time over all CPUs (user, nice, system, irq,
	// softirq, steal) in USER_HZ ticks; cpus its number of CPUs; ok whether /proc/stat
	// was read.
	busyTicks uint64
	cpus      int
	ok        bool
}

// readMachine reads the machine's busy ticks and CPUs from /proc/stat.
func readMachine() (busy uint64, cpus int, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 9 && f[0] == "cpu":
			for _, i := range []int{1, 2, 3, 6, 7, 8} {
				v, err := strconv.ParseUint(f[i], 10, 64)
				if err != nil {
					return 0, 0, false
				}
				busy += v
			}
			ok = true
		case len(f) > 0 && strings.HasPrefix(f[0], "cpu") && f[0] != "cpu":
			cpus++
		}
	}
	return busy, cpus, ok
}

// SampleCPU reads the CPU time of each named root process and of its descendants with the
// same command name (PostgreSQL's backends), reaped children included.
func SampleCPU(roots map[string]int) CPUSample {
	procs := readProcs()
	children := make(map[int][]int)
	for _, p := range procs {
		children[p.ppid] = append(children[p.ppid], p.pid)
	}
	out := CPUSample{procs: make(map[string]uint64)}
	out.busyTicks, out.cpus, out.ok = readMachine()
	for name, root := range roots {
		rp, ok := procs[root]
		if !ok {
			continue
		}
		stack := []int{root}
		for len(stack) > 0 {
			pid := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			p := procs[pid]
			if p.comm != rp.comm {
				continue
			}
			out.procs[name] += p.cpuNS
			stack = append(stack, children[pid]...)
		}
	}
	return out
}

// CPUSince returns the CPU used by each group since before, over wall time, per completed
// job.
func CPUSince(before, after CPUSample, wall time.Duration, completed int) []ProcessCPU {
	var out []ProcessCPU
	for _, name := range slices.Sorted(maps.Keys(after.procs)) {
		c := ProcessCPU{Name: name, CPUS: max(float64(int64(after.procs[name])-int64(before.procs[name]))/1e9, 0)}
		if wall > 0 {
			c.Cores = c.CPUS / wall.Seconds()
		}
		if completed > 0 {
			c.PerRunUS = c.CPUS / float64(completed) * 1e6
		}
		out = append(out, c)
	}
	return out
}

// MachineSince returns the whole machine's CPU since before, over wall time, per completed
// job; nil when /proc/stat could not be read.
func MachineSince(before, after CPUSample, wall time.Duration, completed int) *MachineCPU {
	if !before.ok || !after.ok {
		return nil
	}
	m := &MachineCPU{CPUs: after.cpus, BusyS: max(float64(int64(after.busyTicks)-int64(before.busyTicks))/userHZ, 0)}
	if wall > 0 {
		m.BusyCores = m.BusyS / wall.Seconds()
	}
	if completed > 0 {
		m.PerRunUS = m.BusyS / float64(completed) * 1e6
	}
	return m
}
