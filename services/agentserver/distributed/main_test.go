// Package distributed holds the tests of agentserver's distributed mode: real gateway,
// scheduler and worker-agent processes (built once per test binary) that find each other
// through a real Consul agent in dev mode (discoverytest), one PostgreSQL (pgtest), and
// clients built with pkg/client that resolve the gateways through Consul. The tests kill
// -9 and stop those processes and check that clients keep working, workers move to the
// surviving scheduler, and no run is lost or executed twice.
//
// The package is test-only. It owns the processes it starts, the Consul agents and the
// files under each test's temporary directory; it never reaches beyond loopback and never
// kills a process it did not start.
package distributed

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

// TestMain builds the service binaries once, then runs the tests with a private
// PostgreSQL. Like pgtest's, the binaries' directory carries an owner.pid file: later
// test binaries remove those whose owner is gone (pgtest.Main exits the process).
func TestMain(m *testing.M) {
	b, err := proctest.Build(
		"github.com/agentserver/agentserver/services/gateway/cmd/gateway",
		"github.com/agentserver/agentserver/services/scheduler/cmd/scheduler",
		"github.com/agentserver/agentserver/services/worker-agent/cmd/worker-agent",
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "distributed:", err)
		os.Exit(1)
	}
	bins.gateway, bins.scheduler, bins.worker = b["gateway"], b["scheduler"], b["worker-agent"]
	pgtest.Main(m)
}
