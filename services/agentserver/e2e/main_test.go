// Package e2e holds the process-level end-to-end tests of agentserver: the real gateway,
// scheduler and worker-agent binaries, started as separate processes against a real
// PostgreSQL (pgtest), with real Python executors, on loopback only. They kill -9, pause
// and drain those processes and check, from the database, the public API and the
// executors' own records, that runs are never lost, never completed twice, never placed on
// the wrong slots and never exceed their assistant's concurrency limit.
//
// The package is test-only. It owns the processes it starts and the files under each
// test's temporary directory; it must never reach beyond loopback, and never kill a
// process it did not start.
package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/pkg/proctest"
)

// bins holds the paths of the service binaries built for this test binary.
var bins struct {
	gateway, scheduler, worker string
}

// TestMain builds the three service binaries once for the whole test binary, then runs
// the tests with a private PostgreSQL (pgtest.Main).
//
// pgtest.Main exits the process, so the binaries' directory cannot be removed on the way
// out; like pgtest's own directories it carries an owner.pid file (proctest.Build), and every later test
// binary removes the directories whose owner is gone.
func TestMain(m *testing.M) {
	b, err := proctest.Build(
		"github.com/agentserver/agentserver/services/gateway/cmd/gateway",
		"github.com/agentserver/agentserver/services/scheduler/cmd/scheduler",
		"github.com/agentserver/agentserver/services/worker-agent/cmd/worker-agent",
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	bins.gateway, bins.scheduler, bins.worker = b["gateway"], b["scheduler"], b["worker-agent"]
	pgtest.Main(m)
}
