package hashring

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

var three = []string{"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"}

func keys(n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = fmt.Sprintf("thread-%08d", i)
	}
	return ks
}

func owners(t *testing.T, r *Ring, ks []string) map[string]string {
	t.Helper()
	m := make(map[string]string, len(ks))
	for _, k := range ks {
		o, ok := r.Owner(k)
		require.True(t, ok)
		m[k] = o
	}
	return m
}

func TestEmptyRing(t *testing.T) {
	t.Parallel()
	for _, r := range []*Ring{New(nil, 0), {}} {
		_, ok := r.Owner("k")
		require.False(t, ok)
		require.Empty(t, slices.Collect(r.Walk("k")))
		require.Zero(t, r.Len())
	}
}

func TestSameKeySameNodeWhileStable(t *testing.T) {
	t.Parallel()
	ks := keys(10_000)
	a := owners(t, New(three, 0), ks)
	// A ring built independently, from the nodes in another order and with
	// duplicates, as another client process would, agrees on every key.
	b := owners(t, New([]string{three[2], three[0], three[1], three[0], ""}, 0), ks)
	require.Equal(t, a, b)
	r := New(three, 0)
	for _, k := range ks[:100] {
		for range 3 {
			o, _ := r.Owner(k)
			require.Equal(t, a[k], o)
		}
	}
}

// TestRemovingNodeMovesOnlyItsKeys checks the defining property exactly: keys
// the removed node did not own never move, and every key it owned moves to the
// node that came next after it on the old ring.
func TestRemovingNodeMovesOnlyItsKeys(t *testing.T) {
	t.Parallel()
	ks := keys(30_000)
	before := New(three, 0)
	after := New(three[1:], 0)
	removed := three[0]

	ob, oa := owners(t, before, ks), owners(t, after, ks)
	moved, owned := 0, 0
	for _, k := range ks {
		if ob[k] == removed {
			owned++
			// The new owner is the failover order's next node on the old ring.
			walk := slices.Collect(before.Walk(k))
			require.Equal(t, removed, walk[0])
			require.Equal(t, walk[1], oa[k], "key %s", k)
		} else {
			require.Equal(t, ob[k], oa[k], "key %s owned by %s moved", k, ob[k])
		}
		if ob[k] != oa[k] {
			moved++
		}
	}
	require.Equal(t, owned, moved, "exactly the removed node's keys move")
	frac := float64(moved) / float64(len(ks))
	t.Logf("removing 1 of 3 nodes moved %d of %d keys (%.1f%%)", moved, len(ks), 100*frac)
	require.InDelta(t, 1.0/3, frac, 0.06)
}

func TestAddingNodeMovesKeysOnlyToIt(t *testing.T) {
	t.Parallel()
	ks := keys(30_000)
	added := "10.0.0.4:8080"
	ob := owners(t, New(three, 0), ks)
	oa := owners(t, New(append(slices.Clone(three), added), 0), ks)
	moved := 0
	for _, k := range ks {
		if ob[k] != oa[k] {
			require.Equal(t, added, oa[k])
			moved++
		}
	}
	require.InDelta(t, 0.25, float64(moved)/float64(len(ks)), 0.06)
}

func TestDistributionAcrossThreeNodes(t *testing.T) {
	t.Parallel()
	ks := keys(90_000)
	count := map[string]int{}
	for _, o := range owners(t, New(three, 0), ks) {
		count[o]++
	}
	require.Len(t, count, 3)
	mean := float64(len(ks)) / 3
	for n, c := range count {
		dev := math.Abs(float64(c)-mean) / mean
		t.Logf("%s owns %d keys (%.1f%% off the mean)", n, c, 100*dev)
		require.Less(t, dev, 0.15, "node %s is %.1f%% off an even share", n, 100*dev)
	}
}

func TestWalkYieldsEveryNodeOnceOwnerFirst(t *testing.T) {
	t.Parallel()
	r := New(three, 8)
	for _, k := range keys(500) {
		walk := slices.Collect(r.Walk(k))
		require.Len(t, walk, 3)
		o, _ := r.Owner(k)
		require.Equal(t, o, walk[0])
		require.ElementsMatch(t, three, walk)
	}
	// Stopping early is honoured.
	n := 0
	for range r.Walk("k") {
		n++
		break
	}
	require.Equal(t, 1, n)
}

func BenchmarkOwner(b *testing.B) {
	r := New(three, 0)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r.Owner("thread-0123456789")
	}
}
