package discovery

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
)

// Reap removes from this process's Consul agent the instances of the given services whose
// check has been critical for longer than after, until ctx ends; it looks every interval.
//
// Consul itself raises DeregisterCriticalServiceAfter to at least one minute and reaps
// every 30 s, so a killed process would linger in the catalog for 60–90 s. Every
// agentserver process reaps its dead siblings registered with the same agent, so a killed
// one leaves the catalog within its configured window whenever another agentserver process
// shares its agent (one agent per host is the usual Consul layout). It only deregisters
// through the owning agent, so anti-entropy never brings an instance back; it never touches
// other services' instances, nor its own (self).
func (c *Consul) Reap(ctx context.Context, services []string, self string, after, interval time.Duration, log *slog.Logger) {
	if log == nil {
		log = slog.Default()
	}
	since := make(map[string]time.Time) // service id -> first seen critical
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		checks, err := c.client.Agent().ChecksWithFilterOpts("", (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			continue // the agent is unreachable: nothing can be reaped through it now
		}
		seen := make(map[string]bool)
		now := time.Now()
		for _, ch := range checks {
			if ch.ServiceID == "" || ch.ServiceID == self || !slices.Contains(services, ch.ServiceName) {
				continue
			}
			if ch.Status != api.HealthCritical {
				continue
			}
			seen[ch.ServiceID] = true
			first, ok := since[ch.ServiceID]
			if !ok {
				since[ch.ServiceID] = now
				continue
			}
			if now.Sub(first) < after {
				continue
			}
			if err := c.client.Agent().ServiceDeregisterOpts(ch.ServiceID, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
				log.Warn("reaping a dead instance from consul failed; consul's own reaper will remove it", "service", ch.ServiceName, "id", ch.ServiceID, "err", err)
				continue
			}
			log.Info("reaped a dead instance from consul", "service", ch.ServiceName, "id", ch.ServiceID, "critical_for", now.Sub(first).Round(time.Millisecond))
			delete(since, ch.ServiceID)
		}
		for id := range since {
			if !seen[id] {
				delete(since, id) // passing again, or gone
			}
		}
	}
}
