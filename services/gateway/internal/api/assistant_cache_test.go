package api

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/store"
)

type fakeLoader struct {
	versions map[string]int64
	reads    int
	// during runs inside a read, after it read the version (a write racing with it).
	during func()
}

func (f *fakeLoader) load(_ context.Context, tenant, id string) (*store.Assistant, error) {
	f.reads++
	v, ok := f.versions[id]
	if !ok {
		return nil, store.ErrNotFound
	}
	a := &store.Assistant{TenantID: tenant, ID: id, Version: v}
	if f.during != nil {
		during := f.during
		f.during = nil
		during()
	}
	return a, nil
}

func TestAssistantCache(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	c := NewAssistantCache(2 * time.Second)
	c.now = func() time.Time { return now }
	f := &fakeLoader{versions: map[string]int64{"a": 1}}
	get := func() int64 {
		t.Helper()
		a, err := c.get(t.Context(), "t", "a", f.load)
		require.NoError(t, err)
		return a.Version
	}

	require.EqualValues(t, 1, get())
	require.EqualValues(t, 1, get())
	require.Equal(t, 1, f.reads, "the second read is served from memory")

	// Another gateway updates it: this one shows the old version until the TTL passes.
	f.versions["a"] = 2
	require.EqualValues(t, 1, get())
	now = now.Add(2 * time.Second)
	require.EqualValues(t, 2, get())

	// This gateway updates it: the new version is served at once.
	c.invalidate("t", "a")
	f.versions["a"] = 3
	c.put(&store.Assistant{TenantID: "t", ID: "a", Version: 3})
	require.EqualValues(t, 3, get())

	// A read that raced with an update through this gateway does not cache what it read.
	now = now.Add(time.Minute)
	f.during = func() {
		c.invalidate("t", "a")
		f.versions["a"] = 4
		c.put(&store.Assistant{TenantID: "t", ID: "a", Version: 4})
	}
	require.EqualValues(t, 3, get(), "the racing read itself returns what it read")
	require.EqualValues(t, 4, get(), "but the cache holds the write")

	// Deleted here: gone at once; errors are not cached.
	c.invalidate("t", "a")
	delete(f.versions, "a")
	_, err := c.get(t.Context(), "t", "a", f.load)
	require.True(t, errors.Is(err, store.ErrNotFound))

	// Tenants do not share entries.
	f.versions["a"] = 5
	require.EqualValues(t, 5, get())
	a, err := c.get(t.Context(), "other", "a", f.load)
	require.NoError(t, err)
	require.Equal(t, "other", a.TenantID)

	// A nil cache reads through.
	var none *AssistantCache
	reads := f.reads
	_, _ = none.get(t.Context(), "t", "a", f.load)
	_, _ = none.get(t.Context(), "t", "a", f.load)
	require.Equal(t, reads+2, f.reads)
	require.Nil(t, NewAssistantCache(0))
}
