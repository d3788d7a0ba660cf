package scheduler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The interval between two queue vacuums balances the vacuum's cost per run against the
// dead entries claims read past: it stays at the configured least for cheap vacuums or
// small claims, grows with the square root of the vacuum's time and the claims' size, and
// is capped.
func TestVacuumIntervalGrowsWithTheVacuumsCost(t *testing.T) {
	for _, tc := range []struct {
		name     string
		took     time.Duration
		perClaim float64
		want     int
	}{
		{"shallow queue, small claims", 2300 * time.Microsecond, 6, 2000},
		{"deep queue, one run per claim", 67 * time.Millisecond, 1, 2315},
		{"burn-down of 100,000", 10 * time.Millisecond, 240, 13856},
		{"burn-down of 1,000,000", 67 * time.Millisecond, 250, 36606},
		{"a vacuum that waited a minute", time.Minute, 500, 100_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, vacuumInterval(2000, tc.took, tc.perClaim))
		})
	}
	require.Equal(t, 20, vacuumInterval(20, 0, 0), "no vacuum time: the least")
}
