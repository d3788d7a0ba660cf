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
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/agentserver/agentserver/pkg/pgtest"
)

// bins holds the paths of the binaries built for this test binary.
var bins struct {
	gateway, scheduler, worker, autoscaler string
}

const (
	binDirPattern = "agentserver-autoscaler-e2e-bin-*"
	binOwnerFile  = "owner.pid"
)

// TestMain builds the four binaries once for the whole test binary, then runs the tests
// with a private PostgreSQL (pgtest.Main).
//
// pgtest.Main exits the process, so the binaries' directory cannot be removed on the way
// out; it carries an owner.pid file, and every later test binary removes the directories
// whose owner is gone.
func TestMain(m *testing.M) {
	if err := buildBinaries(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
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
	// The other services are modules of the same workspace (go.work).
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
		"github.com/agentserver/agentserver/services/gateway/cmd/gateway",
		"github.com/agentserver/agentserver/services/scheduler/cmd/scheduler",
		"github.com/agentserver/agentserver/services/worker-agent/cmd/worker-agent",
		"github.com/agentserver/agentserver/services/autoscaler/cmd/autoscaler",
	)
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return fmt.Errorf("building the binaries: %v\n%s", err, out)
	}
	bins.gateway = filepath.Join(dir, "gateway")
	bins.scheduler = filepath.Join(dir, "scheduler")
	bins.worker = filepath.Join(dir, "worker-agent")
	bins.autoscaler = filepath.Join(dir, "autoscaler")
	return nil
}

// removeStaleBinDirs removes the binaries' directories of test binaries that are gone.
func removeStaleBinDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), binDirPattern))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, binOwnerFile))
		if err != nil {
			continue // being made right now, or not ours
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
