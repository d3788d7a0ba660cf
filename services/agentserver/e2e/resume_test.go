package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/proctest"
)

// stepsScript runs steps a, b and c; b waits for config.release to exist. Each call
// appends {step, phase, pid, epoch} to config.record.
const stepsScript = `import json, os, sys, time
def rec(cfg, **kw):
    with open(cfg["record"], "a") as f:
        f.write(json.dumps(kw) + "\n")
for line in sys.stdin:
    req = json.loads(line)
    cfg, state, step = req["config"], dict(req["state"]), req["step"]
    rec(cfg, step=step, phase="start", pid=os.getpid(), epoch=req.get("epoch"))
    if step == "b":
        deadline = time.time() + 60
        while not os.path.exists(cfg["release"]) and time.time() < deadline:
            time.sleep(0.05)
    state[step] = req.get("epoch")
    rec(cfg, step=step, phase="done", pid=os.getpid(), epoch=req.get("epoch"))
    sys.stdout.write(json.dumps({"type": "result", "id": req["id"], "state": state}) + "\n")
    sys.stdout.flush()
`

type stepRecord struct {
	Step  string `json:"step"`
	Phase string `json:"phase"`
	PID   int    `json:"pid"`
	Epoch int64  `json:"epoch"`
}

func readStepRecords(t *testing.T, path string) []stepRecord {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	defer f.Close()
	var out []stepRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r stepRecord
		require.NoError(t, json.Unmarshal(sc.Bytes(), &r))
		out = append(out, r)
	}
	return out
}

// Kill -9 the worker in the middle of a multi-step run: the run resumes on another worker
// from its last checkpoint, and each completed step ran to completion exactly once.
func TestWorkerKilledMidFlowResumesFromCheckpoint(t *testing.T) {
	c := newCluster(t)
	s := c.startScheduler()
	first := c.startWorker(workerOpts{slots: "cpu=1", schedulers: []*scheduler{s}})

	script := filepath.Join(c.dir, "steps.py")
	require.NoError(t, os.WriteFile(script, []byte(stepsScript), 0o644))
	records, release := filepath.Join(c.dir, "steps.jsonl"), filepath.Join(c.dir, "release")
	config, err := structpb.NewStruct(map[string]any{"record": records, "release": release})
	require.NoError(t, err)
	_, err = c.assistants.CreateAssistant(t.Context(), &agentserverv1.CreateAssistantRequest{AssistantId: "three-steps", Assistant: &agentserverv1.Assistant{
		Flow:   fmt.Sprintf("executors:\n  - name: x\n    command: [\"python3\", %q]\nsteps:\n  - {name: a, executor: x}\n  - {name: b, executor: x}\n  - {name: c, executor: x}\n", script),
		Config: config,
	}})
	require.NoError(t, err)
	r := c.createRun("three-steps", map[string]any{})

	// Step a is done (and checkpointed) and b is under way on the first worker.
	proctest.Eventually(t, 30*time.Second, "step b started", func() (bool, string) {
		for _, rec := range readStepRecords(t, records) {
			if rec.Step == "b" && rec.Phase == "start" {
				return true, ""
			}
		}
		return false, "not yet"
	})
	first.Kill()
	second := c.startWorker(workerOpts{slots: "cpu=1", schedulers: []*scheduler{s}})
	require.NoError(t, os.WriteFile(release, nil, 0o644))

	done := c.waitRunState(r.GetName(), agentserverv1.Run_SUCCEEDED, 60*time.Second)
	require.Equal(t, "workers/"+second.id, done.GetWorker())

	recs := readStepRecords(t, records)
	completed := map[string]int{}
	started := map[string]int{}
	for _, rec := range recs {
		if rec.Phase == "done" {
			completed[rec.Step]++
		} else {
			started[rec.Step]++
		}
	}
	require.Equal(t, map[string]int{"a": 1, "b": 1, "c": 1}, completed, "each step completed exactly once: %v", recs)
	require.Equal(t, 1, started["a"], "the checkpointed step a did not run again")
	require.Equal(t, 2, started["b"], "b was cut short by the kill and ran again on the second worker")
	out := done.GetOutput().AsMap()
	require.Less(t, out["a"].(float64), out["b"].(float64), "a ran under the first claim, b and c under the second")
	require.Equal(t, out["b"], out["c"])
}
