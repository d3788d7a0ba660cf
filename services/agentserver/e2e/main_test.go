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
	binDirPattern = "agentserver-e2e-bin-*"
	binOwnerFile  = "owner.pid"
)

// TestMain builds the three service binaries once for the whole test binary, then runs
// the tests with a private PostgreSQL (pgtest.Main).
//
// pgtest.Main exits the process, so the binaries' directory cannot be removed on the way
// out; like pgtest's own directories it carries an owner.pid file, and every later test
// binary removes the directories whose owner is gone.
func TestMain(m *testing.M) {
	if err := buildBinaries(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	pgtest.Main(m)
}

// buildBinaries builds gateway, scheduler and worker-agent into a fresh directory.
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
