package config_test

import (
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/config"
)

// Not parallel: the GC target is the process's.
func TestApplyGCPercent(t *testing.T) {
	orig := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(orig) })

	t.Setenv("GOGC", "")
	debug.SetGCPercent(100)
	require.Equal(t, config.GCPercent, config.ApplyGCPercent(), "an empty GOGC is unset")
	require.Equal(t, config.GCPercent, debug.SetGCPercent(100), "the runtime's target is set")

	t.Setenv("GOGC", "150")
	debug.SetGCPercent(150) // what the runtime read at start-up
	require.Equal(t, 150, config.ApplyGCPercent(), "the operator's GOGC wins")
	require.Equal(t, 150, debug.SetGCPercent(150), "and is left in place")
}
