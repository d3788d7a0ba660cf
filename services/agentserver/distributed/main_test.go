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
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/agentserver/agentserver/pkg/pgtest"
)

// bins holds the paths of the service binaries built for this test binary.
var bins struct {
	gateway, scheduler, worker string
}

const (
	binDirPattern = "agentserver-distributed-bin-*"
	binOwnerFile  = "owner.pid"
)

// TestMain builds the service binaries once, then runs the tests with a private
// PostgreSQL. Like pgtest's, the binaries' directory carries an owner.pid file: later
// test binaries remove those whose owner is gone (pgtest.Main exits the process).
func TestMain(m *testing.M) {
	if err := buildBinaries(); err != nil {
		fmt.Fprintln(os.Stderr, "distributed:", err)
		os.Exit(1)
	}
	pgtest.Main(m)
}

func buildBinaries() error {
	removeStaleBinDirs()
	dir, err := os.MkdirTemp("", binDirPattern)
	if err != nil {
		return fmt.Errorf("creating the binaries' directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, binOwnerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
		"github.com/agentserver/agentserver/services/gateway/cmd/gateway",
		"github.com/agentserver/agentserver/services/scheduler/cmd/scheduler",
		"github.com/agentserver/agentserver/services/worker-agent/cmd/worker-agent",
	)
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return fmt.Errorf("building the service binaries: %v\n%s", err, out)
	}
	bins.gateway = filepath.Join(dir, "gateway")
	bins.scheduler = filepath.Join(dir, "scheduler")
	bins.worker = filepath.Join(dir, "worker-agent")
	return nil
}

// removeStaleBinDirs removes the binaries' directories of test binaries that are gone.
func removeStaleBinDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), binDirPattern))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, binOwnerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			_ = os.RemoveAll(dir)
		}
	}
}
