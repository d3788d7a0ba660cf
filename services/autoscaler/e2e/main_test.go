// Package e2e holds the autoscaler's end-to-end test: the real gateway, scheduler,
// worker-agent and autoscaler binaries, started as separate processes against a real
// PostgreSQL (pgtest), with a real Python executor, on loopback only. The autoscaler
// reads the scheduler's and the gateway's statistics over gRPC and scales a pool of
// worker-agent processes through its process driver.
//
// The package is test-only. It owns the processes it starts (the autoscaler owns the
// workers) and the files under each test's temporary directory; it must never reach
// beyond loopback, and never signal a process it did not start.
package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/pkg/proctest"
)

// bins holds the paths of the binaries built for this test binary.
var bins struct {
	gateway, scheduler, worker, autoscaler string
}

// TestMain builds the four binaries once for the whole test binary, then runs the tests
// with a private PostgreSQL (pgtest.Main).
//
// pgtest.Main exits the process, so the binaries' directory cannot be removed on the way
// out; it carries an owner.pid file, and every later test binary removes the directories
// whose owner is gone.
func TestMain(m *testing.M) {
	// The other services are modules of the same workspace (go.work).
	b, err := proctest.Build(
		"github.com/agentserver/agentserver/services/gateway/cmd/gateway",
		"github.com/agentserver/agentserver/services/scheduler/cmd/scheduler",
		"github.com/agentserver/agentserver/services/worker-agent/cmd/worker-agent",
		"github.com/agentserver/agentserver/services/autoscaler/cmd/autoscaler",
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	bins.gateway, bins.scheduler, bins.worker, bins.autoscaler = b["gateway"], b["scheduler"], b["worker-agent"], b["autoscaler"]
	pgtest.Main(m)
}
