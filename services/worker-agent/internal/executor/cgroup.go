package executor

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cgroupV2 enforces resources.memory with cgroup v2: each limited replica starts directly
// inside its own child group (clone into the group: no moment outside it) whose memory.max
// is the limit, and an OOM kill shows in the group's memory.events. Parent must be a
// delegated cgroup v2 directory whose cgroup.subtree_control enables "memory" and where
// the worker may create groups (Config.CgroupDir, WORKER_CGROUP_DIR). Without one, limits
// are address-space rlimits instead.
type cgroupV2 struct {
	parent string
}

// newCgroupV2 checks that dir is usable: a cgroup v2 directory delegating the memory
// controller to its children.
func newCgroupV2(dir string) (*cgroupV2, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return nil, fmt.Errorf("cgroup directory %s: %w (is it a cgroup v2 directory?)", dir, err)
	}
	for _, c := range strings.Fields(string(b)) {
		if c == "memory" {
			return &cgroupV2{parent: dir}, nil
		}
	}
	return nil, fmt.Errorf("cgroup directory %s does not delegate the memory controller: write \"+memory\" to its cgroup.subtree_control", dir)
}

// create makes the group of one replica with its memory limit and returns its path.
func (c *cgroupV2) create(name string, limit int64) (string, error) {
	dir := filepath.Join(c.parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating cgroup %s: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "memory.max"), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		_ = os.Remove(dir)
		return "", fmt.Errorf("setting memory.max of %s: %w", dir, err)
	}
	// No swap: the limit is the limit.
	_ = os.WriteFile(filepath.Join(dir, "memory.swap.max"), []byte("0"), 0o644)
	return dir, nil
}

// oomKilled reports whether the kernel killed a process of the group for exceeding
// memory.max.
func oomKilled(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "memory.events"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == "oom_kill" {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n > 0
		}
	}
	return false
}

// removeCgroup removes a replica's group once its processes are gone (the kernel refuses
// while any remain, so it retries briefly).
func removeCgroup(dir string) {
	for range 100 {
		if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// CheckCgroupDir reports why dir cannot hold per-replica memory groups, if it cannot.
func CheckCgroupDir(dir string) error {
	_, err := newCgroupV2(dir)
	return err
}
