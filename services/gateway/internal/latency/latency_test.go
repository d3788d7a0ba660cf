package latency

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPercentilesOverTheWindow(t *testing.T) {
	t.Parallel()
	clock := time.Unix(1000, 0)
	w := NewWindow(time.Minute, 1000)
	w.now = func() time.Time { return clock }
	// Old samples leave the window.
	for range 50 {
		w.Observe(10 * time.Second)
	}
	clock = clock.Add(2 * time.Minute)
	for i := 1; i <= 100; i++ {
		w.Observe(time.Duration(i) * time.Millisecond)
	}
	n, p := w.Percentiles(0.5, 0.95, 0.99, 1)
	require.Equal(t, 100, n)
	require.Equal(t, []time.Duration{50 * time.Millisecond, 95 * time.Millisecond, 99 * time.Millisecond, 100 * time.Millisecond}, p)
}

func TestRingIsBounded(t *testing.T) {
	t.Parallel()
	w := NewWindow(time.Hour, 10)
	for i := 1; i <= 25; i++ {
		w.Observe(time.Duration(i))
	}
	n, p := w.Percentiles(0, 1)
	require.Equal(t, 10, n)
	require.Equal(t, []time.Duration{16, 25}, p, "only the newest samples are kept")
	empty := NewWindow(time.Hour, 10)
	n, p = empty.Percentiles(0.95)
	require.Zero(t, n)
	require.Equal(t, []time.Duration{0}, p)
}
