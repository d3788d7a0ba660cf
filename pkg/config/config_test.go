package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestFlagBeatsEnvBeatsDefault(t *testing.T) {
	t.Parallel()
	var a, b, c string
	var d time.Duration
	s := New("x").WithLookup(env(map[string]string{"A": "from-env", "B": "from-env", "D": "3s"}))
	s.String(&a, "a", "A", "def", "")
	s.String(&b, "b", "B", "def", "")
	s.String(&c, "c", "C", "def", "")
	s.Duration(&d, "d", "D", time.Second, "")
	require.NoError(t, s.Parse([]string{"-a", "from-flag"}))
	require.Equal(t, "from-flag", a)
	require.Equal(t, "from-env", b)
	require.Equal(t, "def", c)
	require.Equal(t, 3*time.Second, d)
}

func TestBadEnvNamesTheVariable(t *testing.T) {
	t.Parallel()
	var d time.Duration
	var n int
	s := New("x").WithLookup(env(map[string]string{"LEASE": "soon", "N": "four"}))
	s.Duration(&d, "lease", "LEASE", time.Second, "")
	s.Int(&n, "n", "N", 1, "")
	err := s.Parse(nil)
	require.ErrorContains(t, err, `LEASE="soon": must be a duration`)
}

func TestConfigFileBelowEnvAndFlags(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "worker.yaml")
	require.NoError(t, os.WriteFile(path, []byte("slots: cpu=4,gpu=1\npool: gpu\ndrain-grace: 45s\nworkers: 3\n"), 0o644))
	var slots, pool string
	var grace time.Duration
	var workers int
	s := New("x").WithLookup(env(map[string]string{"WORKER_POOL": "from-env"}))
	s.String(&slots, "slots", "WORKER_SLOTS", "cpu=4", "")
	s.String(&pool, "pool", "WORKER_POOL", "default", "")
	s.Duration(&grace, "drain-grace", "", time.Second, "")
	s.Int(&workers, "workers", "", 1, "")
	require.NoError(t, s.Parse([]string{"-config", path, "-workers", "2"}))
	require.Equal(t, "cpu=4,gpu=1", slots, "from the file")
	require.Equal(t, "from-env", pool, "the variable wins over the file")
	require.Equal(t, 45*time.Second, grace)
	require.Equal(t, 2, workers, "the flag wins over the file")
}

func TestConfigFileErrorsNameTheSetting(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for content, msg := range map[string]string{
		"slotz: cpu=4\n":        `"slotz" is not a setting`,
		"drain-grace: soon\n":   "drain-grace",
		"- a\n- b\n":            "not a YAML mapping",
		"drain-grace: {a: 1}\n": "must be a single value",
	} {
		path := filepath.Join(dir, "c.yaml")
		require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
		var grace time.Duration
		var slots string
		s := New("x").WithLookup(env(nil))
		s.Duration(&grace, "drain-grace", "", time.Second, "")
		s.String(&slots, "slots", "", "", "")
		require.ErrorContains(t, s.Parse([]string{"-config", path}), msg, content)
	}
}
