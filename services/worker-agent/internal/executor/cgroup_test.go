package executor

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// The cgroup v2 file protocol, on a directory standing in for a delegated cgroup (this
// machine has no cgroup v2 memory controller; a real one behaves the same through these
// files, and the kernel adds the clone-into-group at start).
func TestCgroupV2Files(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	_, err := newCgroupV2(parent)
	require.ErrorContains(t, err, "is it a cgroup v2 directory")
	require.NoError(t, os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte("cpu io\n"), 0o644))
	_, err = newCgroupV2(parent)
	require.ErrorContains(t, err, `write "+memory"`)
	require.NoError(t, os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte("cpu memory io\n"), 0o644))
	cg, err := newCgroupV2(parent)
	require.NoError(t, err)

	dir, err := cg.create("replica-1", 256<<20)
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(dir, "memory.max"))
	require.NoError(t, err)
	require.Equal(t, "268435456", string(b))
	require.False(t, oomKilled(dir), "no memory.events yet")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "memory.events"), []byte("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n"), 0o644))
	require.False(t, oomKilled(dir))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "memory.events"), []byte("low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n"), 0o644))
	require.True(t, oomKilled(dir))
	_, err = cg.create("replica-1", 1)
	require.Error(t, err, "a group name is used once")
}
