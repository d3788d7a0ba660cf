package scheduler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The rest after a claim that drained the queue grows with the rate runs are claimed at,
// above cooldownRate a second, up to cooldownMax times the configured cooldown; below it,
// after a claim limited by the free slots, and after an idle spell it is the configured one.
func TestClaimRestGrowsWithTheRateOnlyWhenClaimsDrainTheQueue(t *testing.T) {
	const base = time.Millisecond
	t0 := time.Unix(1_800_000_000, 0)
	// run claims n runs every `every` for a second and returns the rests after each.
	run := func(p *claimPacer, start time.Time, every time.Duration, n int, drained bool) []time.Duration {
		var rests []time.Duration
		for at := time.Duration(0); at < time.Second; at += every {
			rest, _ := p.rest(start.Add(at), n, drained)
			rests = append(rests, rest)
		}
		return rests
	}
	settled := func(rests []time.Duration) []time.Duration {
		return rests[len(rests)/2:] // after the first windows
	}

	// Claim sequences of a second each, and the rest every claim gets once the rate of
	// the windows before it is known (the first claims get the cooldown as configured).
	for _, tc := range []struct {
		name    string
		every   time.Duration
		n       int
		drained bool
		want    time.Duration
	}{
		{"500 runs a second", 2 * time.Millisecond, 1, true, base},
		{"3,000 runs a second, each claim draining the queue", 2 * time.Millisecond, 6, true, 3 * base},
		{"10,000 runs a second: capped", 2 * time.Millisecond, 20, true, cooldownMax * base},
		{"a backlog: claims limited by the free slots", 10 * time.Millisecond, 240, false, base},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rests := run(&claimPacer{base: base}, t0, tc.every, tc.n, tc.drained)
			require.Equal(t, base, rests[0], "no rate measured yet")
			for _, r := range settled(rests) {
				require.Equal(t, tc.want, r)
			}
		})
	}
	t.Run("after an idle spell", func(t *testing.T) {
		p := &claimPacer{base: base}
		run(p, t0, 2*time.Millisecond, 20, true)
		rest, _ := p.rest(t0.Add(time.Second+300*time.Millisecond), 6, true)
		require.Equal(t, base, rest)
	})
	t.Run("nothing claimed, or no cooldown configured", func(t *testing.T) {
		p := &claimPacer{base: base}
		run(p, t0, 2*time.Millisecond, 20, true)
		rest, _ := p.rest(t0.Add(time.Second), 0, true)
		require.Zero(t, rest)
		off := &claimPacer{}
		for _, r := range run(off, t0, 2*time.Millisecond, 20, true) {
			require.Zero(t, r)
		}
	})
}
