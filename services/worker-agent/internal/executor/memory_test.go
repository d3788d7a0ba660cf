package executor_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/services/worker-agent/internal/executor"
)

// allocator is an executor that allocates state.mib MiB before answering.
const allocator = `import json, sys
for line in sys.stdin:
    req = json.loads(line)
    block = bytearray(int(req["state"]["mib"]) << 20)
    sys.stdout.write(json.dumps({"type": "result", "id": req["id"], "state": {"allocated": len(block) >> 20}}) + "\n")
    sys.stdout.flush()
`

// resources.memory bounds each replica: an allocation past it fails the step with a message
// naming the limit, and the next request gets a fresh replica that works within it.
func TestMemoryLimitFailsTheStepAndNamesTheLimit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "alloc.py"), []byte(allocator), 0o644))
	m := newManager(t, executor.Config{Dir: dir})
	f := parseFlow(t, "executors:\n  - name: alloc\n    command: [python3, alloc.py]\n    resources: {memory: 256Mi}\n")

	out, _ := run(t, m, f, map[string]any{"mib": 1024})
	require.Equal(t, executor.OutcomeFailed, out.Kind, out.Error)
	require.Contains(t, out.Error, "256Mi")
	require.Contains(t, out.Error, "MemoryError", "the executor's own report of the failed allocation")

	out, _ = run(t, m, f, map[string]any{"mib": 16})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.EqualValues(t, 16, out.State["allocated"])

	// Without a limit the same large allocation succeeds, so the limit is what failed it.
	unlimited := parseFlow(t, "executors:\n  - name: alloc\n    command: [python3, alloc.py]\n")
	out, _ = run(t, m, unlimited, map[string]any{"mib": 512})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
}
