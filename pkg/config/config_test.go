package config

import (
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
