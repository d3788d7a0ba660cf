package intern_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/intern"
)

func TestCacheSharesOneValuePerKey(t *testing.T) {
	var c intern.Cache[*string]
	made := 0
	mk := func(k string) *string { made++; return &k }
	a, b := c.Get("x", mk), c.Get("x", mk)
	require.Same(t, a, b)
	require.Equal(t, "x", *a)
	require.NotSame(t, a, c.Get("y", mk))
	require.Equal(t, 2, made)
}

func TestCacheStopsKeepingPastMax(t *testing.T) {
	c := intern.Cache[*string]{Max: 2}
	mk := func(k string) *string { return &k }
	for i := range 2 {
		k := fmt.Sprint(i)
		require.Same(t, c.Get(k, mk), c.Get(k, mk), "key %s is kept", k)
	}
	first, second := c.Get("2", mk), c.Get("2", mk)
	require.NotSame(t, first, second, "a key past Max is made on every miss")
	require.Equal(t, "2", *first)
	require.Equal(t, "2", *second)
}

// Concurrent first uses of one key all get the value that was kept.
func TestCacheConcurrentFirstUse(t *testing.T) {
	var c intern.Cache[*string]
	mk := func(k string) *string { return &k }
	got := make([]*string, 16)
	var wg sync.WaitGroup
	for i := range got {
		wg.Go(func() { got[i] = c.Get("k", mk) })
	}
	wg.Wait()
	for _, g := range got {
		require.Same(t, got[0], g)
	}
}
