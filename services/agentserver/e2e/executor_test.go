package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"
)

// executorScript is the executor of every test: protocol v1 over stdin/stdout, Python
// stdlib only. Before and after the work of each request it appends one JSON line to the
// file named by the assistant's config "record" (one O_APPEND write per line, so lines of
// concurrent executors never interleave): when (t), who (pid, its parent the worker-agent
// ppid, its process group pgid), what (run, epoch, attempt) and the phase: start, done,
// fail (a retryable error was answered) or child (a child process was started).
//
// What the request does is state["action"] (else config["action"], else "sleep"):
//
//   - sleep: sleep state["ms"] (else config["ms"], else 5) milliseconds, then succeed;
//   - hang: start `sleep 1000` as a child, record its pid, then sleep forever;
//   - flaky: answer a retryable error while attempt < state["succeed_at"], then succeed;
//   - slow_first_claim: under the run's first claim (epoch 1) take state["slow_s"]
//     seconds, sending an event every 100 ms unless state["quiet"], before succeeding;
//     under any later claim succeed at once.
//
// A success returns the input state plus who ran it (pid, worker_pid, epoch, attempt).
const executorScript = `#!/usr/bin/env python3
import json
import os
import subprocess
import sys
import time

PID = os.getpid()


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def record(path, **fields):
    fields.update(t=time.time(), pid=PID, ppid=os.getppid(), pgid=os.getpgid(0))
    line = (json.dumps(fields) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def handle(req):
    rid = req["id"]
    state = req.get("state") or {}
    config = req.get("config") or {}
    run, epoch, attempt = req.get("run"), req.get("epoch", 0), req.get("attempt", 0)
    path = config["record"]
    action = state.get("action", config.get("action", "sleep"))
    who = dict(run=run, epoch=epoch, attempt=attempt)
    record(path, phase="start", **who)
    if action == "sleep":
        time.sleep(state.get("ms", config.get("ms", 5)) / 1000.0)
    elif action == "hang":
        child = subprocess.Popen(["sleep", "1000"])
        record(path, phase="child", child=child.pid, **who)
        time.sleep(1000)
    elif action == "flaky":
        if attempt < state["succeed_at"]:
            record(path, phase="fail", **who)
            send({"type": "error", "id": rid, "message": "flaky failure at attempt %d" % attempt, "retryable": True})
            return
    elif action == "slow_first_claim":
        if epoch == 1:
            deadline = time.time() + state.get("slow_s", 60)
            n = 0
            while time.time() < deadline:
                if not state.get("quiet"):
                    send({"type": "event", "id": rid, "data": {"epoch": epoch, "n": n, "pid": PID}})
                n += 1
                time.sleep(0.1)
    else:
        send({"type": "error", "id": rid, "message": "unknown action %r" % action})
        return
    record(path, phase="done", **who)
    out = dict(state)
    out.update(pid=PID, worker_pid=os.getppid(), epoch=epoch, attempt=attempt)
    send({"type": "result", "id": rid, "state": out})


def main():
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            handle(json.loads(line))


if __name__ == "__main__":
    main()
`

// record is one line an executor appended to the records file.
type record struct {
	T       float64 `json:"t"`
	PID     int     `json:"pid"`
	PPID    int     `json:"ppid"`
	PGID    int     `json:"pgid"`
	Run     string  `json:"run"`
	Epoch   int64   `json:"epoch"`
	Attempt int32   `json:"attempt"`
	Phase   string  `json:"phase"`
	Child   int     `json:"child"`
}

// readRecords reads the records file (absent: none yet).
func readRecords(t *testing.T, path string) []record {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	defer f.Close()
	var out []record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r record
		require.NoError(t, json.Unmarshal(sc.Bytes(), &r), "record line %q", sc.Text())
		out = append(out, r)
	}
	require.NoError(t, sc.Err())
	return out
}

// claimKey names one claim of a run: an execution under one fencing epoch.
type claimKey struct {
	run   string
	epoch int64
}

// execution is what the records say about one claim's execution.
type execution struct {
	claimKey
	attempt int32
	pid     int
	worker  int // pid of the worker-agent that ran it
	start   float64
	// end is when the executor recorded the end of its work (done is true); for an
	// execution cut short it is zero until the caller decides (see TestChaos).
	end  float64
	done bool
	// starts and dones count the records of the claim: more than one start would mean
	// the claim was executed twice.
	starts int
	dones  int
}

// executions groups records by claim.
func executions(recs []record) map[claimKey]*execution {
	out := make(map[claimKey]*execution)
	for _, r := range recs {
		k := claimKey{r.Run, r.Epoch}
		e := out[k]
		if e == nil {
			e = &execution{claimKey: k}
			out[k] = e
		}
		switch r.Phase {
		case "start":
			e.starts++
			e.start, e.pid, e.worker, e.attempt = r.T, r.PID, r.PPID, r.Attempt
		case "done", "fail":
			e.dones++
			e.end, e.done = r.T, true
		}
	}
	return out
}

// finished returns the executions as a list, requiring that each one finished: tests
// without faults have no execution cut short.
func finished(t *testing.T, execs map[claimKey]*execution) []*execution {
	t.Helper()
	out := make([]*execution, 0, len(execs))
	for k, e := range execs {
		require.True(t, e.done, "execution %v never finished", k)
		out = append(out, e)
	}
	return out
}

// maxOverlap is the largest number of intervals that hold at one instant. Intervals are
// closed on the left and open on the right: one that ends exactly when another starts
// does not overlap it (an executor reused for the next request records its done before
// the next start).
func maxOverlap(execs []*execution) int {
	type edge struct {
		t     float64
		delta int
	}
	edges := make([]edge, 0, 2*len(execs))
	for _, e := range execs {
		edges = append(edges, edge{e.start, +1}, edge{e.end, -1})
	}
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].t != edges[j].t {
			return edges[i].t < edges[j].t
		}
		return edges[i].delta < edges[j].delta // ends first
	})
	cur, best := 0, 0
	for _, e := range edges {
		cur += e.delta
		best = max(best, cur)
	}
	return best
}
