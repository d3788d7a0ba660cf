// Package intern keeps one value per key for values that many messages share read-only,
// such as the data of the step_started events that nearly every run sends.
package intern

import (
	"sync"
	"sync/atomic"
)

// Cache holds up to Max values by key, made on first use; past Max it makes a fresh value
// on every miss, so that a stream of distinct keys cannot grow it without bound. The zero
// Cache is ready, with Max 0 meaning DefaultMax. Values are shared: callers must only read
// them.
type Cache[V any] struct {
	Max int

	m sync.Map // string → V
	n atomic.Int64
}

// DefaultMax is the size of a Cache whose Max is 0.
const DefaultMax = 1024

// Get returns the value of key, making it with make when the cache does not hold it.
func (c *Cache[V]) Get(key string, make func(string) V) V {
	if v, ok := c.m.Load(key); ok {
		return v.(V)
	}
	v := make(key)
	limit := int64(c.Max)
	if limit <= 0 {
		limit = DefaultMax
	}
	if c.n.Load() < limit {
		if old, loaded := c.m.LoadOrStore(key, v); loaded {
			return old.(V)
		}
		c.n.Add(1)
	}
	return v
}
