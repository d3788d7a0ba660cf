package cli

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// userHZ is the unit of the CPU times in /proc/<pid>/stat: Linux exports them in USER_HZ,
// which is 100 on every architecture Go supports.
const userHZ = 100

// procStat is what /proc/<pid>/stat says of one process.
type procStat struct {
	pid, ppid int
	comm      string
	// utime and stime are the process's own CPU time; cutime and cstime those of the
	// children it has reaped. In clock ticks.
	utime, stime, cutime, cstime uint64
	// runNS is the run time of the process's main thread in nanoseconds, from
	// /proc/<pid>/schedstat (0 where that file cannot be read). Unlike the ticks it is
	// exact, which matters for a single-threaded process: one that ran for less than a
	// tick in all reads 0 ticks, and a benchmark's hundreds of executor processes each run
	// a few milliseconds.
	runNS uint64
}

// ownNS is the process's own CPU time in nanoseconds: the larger of its ticks (every
// thread, but whole ticks) and its main thread's exact run time. For a single-threaded
// process (an executor, a PostgreSQL backend) that is the exact time; for a
// multi-threaded one (a Go server) the ticks, to within one.
func (p procStat) ownNS() uint64 {
	return max((p.utime+p.stime)*(1e9/userHZ), p.runNS)
}

// parseProcStat parses the contents of /proc/<pid>/stat. The command name sits between the
// first '(' and the last ')' and may itself hold spaces and parentheses.
func parseProcStat(b []byte) (procStat, error) {
	var st procStat
	open, closing := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return st, fmt.Errorf("malformed stat line %q", b)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:open])))
	if err != nil {
		return st, fmt.Errorf("malformed pid in stat line %q", b)
	}
	st.pid, st.comm = pid, string(b[open+1:closing])
	// Fields after the name, numbered from 3 in proc(5): state, ppid, ..., utime (14),
	// stime (15), cutime (16), cstime (17).
	f := strings.Fields(string(b[closing+1:]))
	if len(f) < 15 {
		return st, fmt.Errorf("short stat line %q", b)
	}
	num := func(i int) uint64 {
		if err != nil {
			return 0
		}
		var v int64
		v, err = strconv.ParseInt(f[i], 10, 64)
		return uint64(max(v, 0))
	}
	st.ppid = int(num(1))
	st.utime, st.stime, st.cutime, st.cstime = num(11), num(12), num(13), num(14)
	if err != nil {
		return st, fmt.Errorf("malformed stat line %q: %w", b, err)
	}
	return st, nil
}

// listProcs reads the stat of every process under procRoot (normally /proc). Processes
// that exit while it reads are skipped.
func listProcs(procRoot string) ([]procStat, error) {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, err
	}
	var out []procStat
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "stat"))
		if err != nil {
			continue
		}
		st, err := parseProcStat(b)
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "schedstat")); err == nil {
			// "run time (ns), wait time (ns), timeslices"
			if f := strings.Fields(string(b)); len(f) > 0 {
				if ns, err := strconv.ParseUint(f[0], 10, 64); err == nil {
					st.runNS = ns
				}
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// cpuTimes is the CPU time of one process group at one instant: user and sys in clock
// ticks; cpuNS in nanoseconds, each process's own by procStat.ownNS, the reaped
// children's by their ticks.
type cpuTimes struct {
	user, sys uint64
	cpuNS     uint64
	pids      []int
}

// cpuSampler reads the CPU time of process groups from /proc. A group is a set of root
// processes with their descendants of the same command name (postgres's backends);
// descendants named agentserver or postgres (the private PostgreSQL of agentserver dev) go
// to the group of that name, and other descendants (a server's executor processes) to the
// group "<name>-children". Without explicit roots it finds processes named agentserver and
// postgres whose parent has another name. It also reports its own process as agentctl.
type cpuSampler struct {
	procRoot string
	// roots maps a group name to its root pids; nil means discover them by name.
	roots map[string][]int
	self  int
}

// autoGroups are the command names found when no --pids are given.
var autoGroups = []string{"agentserver", "postgres"}

// parsePIDs parses --pids: name=pid,name=pid (a name may repeat).
func parsePIDs(s string) (map[string][]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := make(map[string][]int)
	for item := range strings.SplitSeq(s, ",") {
		name, pidText, ok := strings.Cut(strings.TrimSpace(item), "=")
		pid, err := strconv.Atoi(pidText)
		if !ok || name == "" || err != nil || pid <= 0 {
			return nil, usageErrorf("--pids: want name=pid[,name=pid...], got %q", item)
		}
		out[name] = append(out[name], pid)
	}
	return out, nil
}

// sample reads the CPU time of every group now.
func (s *cpuSampler) sample() (map[string]cpuTimes, error) {
	procs, err := listProcs(s.procRoot)
	if err != nil {
		return nil, fmt.Errorf("reading processes: %w", err)
	}
	byPID := make(map[int]procStat, len(procs))
	children := make(map[int][]int)
	for _, p := range procs {
		byPID[p.pid] = p
		children[p.ppid] = append(children[p.ppid], p.pid)
	}
	roots := s.roots
	if roots == nil {
		roots = make(map[string][]int)
		for _, p := range procs {
			if slices.Contains(autoGroups, p.comm) && byPID[p.ppid].comm != p.comm {
				roots[p.comm] = append(roots[p.comm], p.pid)
			}
		}
	}
	isRoot := make(map[int]bool)
	for _, pids := range roots {
		for _, pid := range pids {
			isRoot[pid] = true
		}
	}
	out := make(map[string]cpuTimes)
	add := func(name string, p procStat, reaped bool) {
		t := out[name]
		t.user += p.utime
		t.sys += p.stime
		t.cpuNS += p.ownNS()
		if reaped {
			t.user += p.cutime
			t.sys += p.cstime
			t.cpuNS += (p.cutime + p.cstime) * (1e9 / userHZ)
		}
		t.pids = append(t.pids, p.pid)
		out[name] = t
	}
	for name, pids := range roots {
		for _, root := range pids {
			rp, ok := byPID[root]
			if !ok {
				continue
			}
			add(name, rp, true)
			// Walk the descendants: those named like the root belong to the group, the
			// others (and all of theirs) to the group's children.
			stack := slices.Clone(children[root])
			for len(stack) > 0 {
				pid := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				p := byPID[pid]
				switch {
				case isRoot[pid]:
					continue // a group of its own, with its descendants
				case p.comm == rp.comm:
					add(name, p, true)
				case slices.Contains(autoGroups, p.comm):
					// A PostgreSQL the server started itself: its own group.
					add(p.comm, p, true)
				default:
					add(name+"-children", p, true)
				}
				stack = append(stack, children[pid]...)
			}
		}
	}
	if p, ok := byPID[s.self]; ok {
		add("agentctl", p, true)
	}
	return out, nil
}

// cpuUsage turns two samples into per-group CPU figures over a window of wallS seconds
// in which completed runs finished.
func cpuUsage(before, after map[string]cpuTimes, wallS float64, completed int) []ProcessCPU {
	var out []ProcessCPU
	for _, name := range slices.Sorted(maps.Keys(after)) {
		a, b := after[name], before[name]
		// A process that left the group between the samples can make a sum go down.
		user := float64(int64(a.user)-int64(b.user)) / userHZ
		sys := float64(int64(a.sys)-int64(b.sys)) / userHZ
		c := ProcessCPU{Name: name, PIDs: slices.Sorted(slices.Values(a.pids)), UserS: max(user, 0), SysS: max(sys, 0),
			CPUS: max(float64(int64(a.cpuNS)-int64(b.cpuNS))/1e9, 0)}
		if wallS > 0 {
			c.Cores = c.CPUS / wallS
		}
		if completed > 0 {
			c.PerRunUS = c.CPUS / float64(completed) * 1e6
		}
		out = append(out, c)
	}
	return out
}

// machineTimes is the whole machine's CPU time at one instant, in clock ticks summed over
// its CPUs, from the first line of /proc/stat: busy is user, nice, system, irq, softirq and
// steal (guest time is already in user), idle is idle and iowait.
type machineTimes struct {
	busy, idle uint64
	cpus       int
}

// parseMachineStat parses the contents of /proc/stat.
func parseMachineStat(b []byte) (machineTimes, error) {
	var m machineTimes
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if f[0] != "cpu" {
			if strings.HasPrefix(f[0], "cpu") {
				m.cpus++
			}
			continue
		}
		// cpu user nice system idle iowait irq softirq steal [guest guest_nice]
		if len(f) < 9 {
			return m, fmt.Errorf("short cpu line in /proc/stat: %q", line)
		}
		var v [8]uint64
		for i := range v {
			n, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return m, fmt.Errorf("cpu line in /proc/stat: field %d: %w", i+1, err)
			}
			v[i] = n
		}
		m.busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
		m.idle = v[3] + v[4]
	}
	if m.busy+m.idle == 0 {
		return m, errors.New("no cpu line in /proc/stat")
	}
	return m, nil
}

// machine reads the whole machine's CPU time now.
func (s *cpuSampler) machine() (machineTimes, error) {
	b, err := os.ReadFile(filepath.Join(s.procRoot, "stat"))
	if err != nil {
		return machineTimes{}, err
	}
	return parseMachineStat(b)
}

// cpuReading is one reading of the process groups' CPU times and the whole machine's, taken
// together at each end of the measured window.
type cpuReading struct {
	groups     map[string]cpuTimes
	groupsErr  error
	machine    machineTimes
	machineErr error
}

// read takes a cpuReading now.
func (s *cpuSampler) read() cpuReading {
	var r cpuReading
	r.groups, r.groupsErr = s.sample()
	r.machine, r.machineErr = s.machine()
	return r
}

// machineUsage turns two readings of the machine into its CPU figures over a window of
// wallS seconds in which completed runs finished.
func machineUsage(before, after machineTimes, wallS float64, completed int) *MachineCPU {
	m := &MachineCPU{CPUs: after.cpus, BusyS: max(float64(int64(after.busy)-int64(before.busy))/userHZ, 0)}
	if wallS > 0 {
		m.BusyCores = m.BusyS / wallS
	}
	if completed > 0 {
		m.PerRunUS = m.BusyS / float64(completed) * 1e6
	}
	return m
}

// errNoProc means /proc cannot be read (not Linux): CPU times are not reported.
var errNoProc = errors.New("no /proc on this system: CPU times are not reported")
