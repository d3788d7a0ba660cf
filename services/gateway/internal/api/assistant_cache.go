package api

import (
	"context"
	"sync"
	"time"

	"github.com/agentserver/agentserver/pkg/store"
)

// DefaultAssistantCacheTTL is how long a gateway serves GetAssistant from memory before
// reading the database again.
const DefaultAssistantCacheTTL = 2 * time.Second

// maxCachedAssistants bounds the cache's memory; past it, expired entries are dropped
// and, if none expired, the cache starts over.
const maxCachedAssistants = 10_000

// AssistantCache keeps recently read assistants in memory for GetAssistant, for at most
// its TTL. It caches GetAssistant's answers only: creating a run reads the assistant's
// current version inside the enqueue transaction, so a run never uses a cached version.
//
// The cache is this gateway's: an update or delete through this gateway replaces or
// drops the entry at once, one through another gateway shows here after at most the TTL.
// Consistent hashing by assistant id (pkg/client's WithConsistentHash, or the NGINX
// example) sends every call about one assistant to the same gateway, which then both
// serves the reads from memory and sees its own writes. A nil *AssistantCache caches
// nothing.
type AssistantCache struct {
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	entries map[cacheKey]cacheEntry
	// gen increases with every invalidation: a read that started before one must not
	// store what it read, which may be older than the write that invalidated.
	gen uint64
}

type cacheKey struct{ tenant, id string }

type cacheEntry struct {
	a       *store.Assistant
	expires time.Time
}

// NewAssistantCache returns a cache whose entries live ttl; ttl <= 0 returns nil, which
// caches nothing.
func NewAssistantCache(ttl time.Duration) *AssistantCache {
	if ttl <= 0 {
		return nil
	}
	return &AssistantCache{ttl: ttl, now: time.Now, entries: make(map[cacheKey]cacheEntry)}
}

// get returns the assistant from the cache, or reads it with load and caches it.
func (c *AssistantCache) get(ctx context.Context, tenant, id string, load func(context.Context, string, string) (*store.Assistant, error)) (*store.Assistant, error) {
	if c == nil {
		return load(ctx, tenant, id)
	}
	k := cacheKey{tenant, id}
	c.mu.Lock()
	e, ok := c.entries[k]
	gen := c.gen
	c.mu.Unlock()
	if ok && c.now().Before(e.expires) {
		return e.a, nil
	}
	a, err := load(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.gen == gen {
		c.putLocked(k, a)
	}
	c.mu.Unlock()
	return a, nil
}

// put caches a (after this gateway created or updated it).
func (c *AssistantCache) put(a *store.Assistant) {
	if c == nil || a == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++ // reads in flight may hold an older version
	c.putLocked(cacheKey{a.TenantID, a.ID}, a)
}

// invalidate drops an assistant (before this gateway writes it).
func (c *AssistantCache) invalidate(tenant, id string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.entries, cacheKey{tenant, id})
}

func (c *AssistantCache) putLocked(k cacheKey, a *store.Assistant) {
	now := c.now()
	if len(c.entries) >= maxCachedAssistants {
		for k, e := range c.entries {
			if !now.Before(e.expires) {
				delete(c.entries, k)
			}
		}
		if len(c.entries) >= maxCachedAssistants {
			clear(c.entries)
		}
	}
	c.entries[k] = cacheEntry{a: a, expires: now.Add(c.ttl)}
}
