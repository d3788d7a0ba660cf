package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/agentserver/agentserver/services/autoscaler/internal/policy"
)

// Document is the JSON statistics document HTTPSource reads, e.g.
//
//	{
//	  "queue_depth": {"cpu": 12, "gpu": 0},
//	  "pools": {
//	    "cpu": {"workers": 3, "ready": 3, "draining": 0,
//	            "slots": {"cpu": {"total": 12, "used": 9}}}
//	  },
//	  "gateway": {"p95_ms": 120.5, "requests": 5321}
//	}
//
// "gateway" is optional (absent: unknown); "requests" of 0 means an empty window.
type Document struct {
	// QueueDepth counts queued runs by slot type.
	QueueDepth map[string]int `json:"queue_depth"`
	// Pools holds the inventory by pool name.
	Pools map[string]DocumentPool `json:"pools"`
	// Gateway holds the gateways' latency; nil when unknown.
	Gateway *DocumentGateway `json:"gateway,omitempty"`
}

// DocumentPool is one pool of a Document.
type DocumentPool struct {
	// Workers counts live workers.
	Workers int `json:"workers"`
	// Ready counts workers taking work.
	Ready int `json:"ready"`
	// Draining counts draining workers.
	Draining int `json:"draining"`
	// Slots of ready workers by slot type.
	Slots map[string]DocumentSlots `json:"slots"`
}

// DocumentSlots counts slots of one type.
type DocumentSlots struct {
	// Total slots.
	Total int `json:"total"`
	// Used slots.
	Used int `json:"used"`
}

// DocumentGateway is the gateways' latency over their window.
type DocumentGateway struct {
	// P95MS is the p95 request latency in milliseconds.
	P95MS float64 `json:"p95_ms"`
	// Requests counts requests in the window; 0 means no data (latency reads as 0).
	Requests int64 `json:"requests"`
}

// maxDocument bounds the statistics document.
const maxDocument = 4 << 20

// HTTPSource reads a Document from a URL at every evaluation: an adapter for any system
// that can serve the statistics as JSON (a sidecar over Prometheus, a script, or the
// scheduler itself until its statistics RPC is wired). It implements
// controller.MetricsSource.
type HTTPSource struct {
	// URL of the document.
	URL string
	// Client makes the requests; nil means a client with a 10s timeout.
	Client *http.Client
	// Policy says which pools to report and which slot type each one scales on.
	Policy policy.Config
}

// Fetch reads and checks the document.
func (s *HTTPSource) Fetch(ctx context.Context) (Document, error) {
	client := s.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
	if err != nil {
		return Document{}, fmt.Errorf("statistics request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return Document{}, fmt.Errorf("fetching statistics: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocument+1))
	if err != nil {
		return Document{}, fmt.Errorf("reading statistics from %s: %w", s.URL, err)
	}
	if resp.StatusCode != http.StatusOK {
		if len(body) > 200 {
			body = body[:200]
		}
		return Document{}, fmt.Errorf("fetching statistics from %s: %s: %s", s.URL, resp.Status, body)
	}
	if len(body) > maxDocument {
		return Document{}, fmt.Errorf("statistics from %s: document larger than %d bytes", s.URL, maxDocument)
	}
	var doc Document
	if err := json.Unmarshal(body, &doc); err != nil {
		return Document{}, fmt.Errorf("statistics from %s: %w", s.URL, err)
	}
	if err := doc.check(); err != nil {
		return Document{}, fmt.Errorf("statistics from %s: %w", s.URL, err)
	}
	return doc, nil
}

func (d Document) check() error {
	for t, n := range d.QueueDepth {
		if n < 0 {
			return fmt.Errorf("queue_depth.%s: must be >= 0 (got %d)", t, n)
		}
	}
	for name, p := range d.Pools {
		if p.Workers < 0 || p.Ready < 0 || p.Draining < 0 {
			return fmt.Errorf("pools.%s: worker counts must be >= 0", name)
		}
		for t, s := range p.Slots {
			if s.Total < 0 || s.Used < 0 || s.Used > s.Total {
				return fmt.Errorf("pools.%s.slots.%s: want 0 <= used <= total (got used %d, total %d)", name, t, s.Used, s.Total)
			}
		}
	}
	if g := d.Gateway; g != nil && (g.P95MS < 0 || g.Requests < 0) {
		return fmt.Errorf("gateway: p95_ms and requests must be >= 0")
	}
	return nil
}

// Cluster converts the document's statistics.
func (d Document) Cluster() Cluster {
	c := Cluster{QueueDepth: d.QueueDepth, Pools: map[string]PoolInventory{}}
	for name, p := range d.Pools {
		inv := PoolInventory{Workers: p.Workers, Ready: p.Ready, Draining: p.Draining, Slots: map[string]Slots{}}
		for t, s := range p.Slots {
			inv.Slots[t] = Slots{Total: s.Total, Used: s.Used}
		}
		c.Pools[name] = inv
	}
	return c
}

// Snapshot implements controller.MetricsSource.
func (s *HTTPSource) Snapshot(ctx context.Context) (policy.Snapshot, error) {
	doc, err := s.Fetch(ctx)
	if err != nil {
		return policy.Snapshot{}, err
	}
	snap := FromCluster(s.Policy, doc.Cluster())
	if g := doc.Gateway; g != nil && s.Policy.Gateway != nil {
		gm := &policy.GatewayMetrics{}
		if g.Requests > 0 {
			gm.P95 = time.Duration(g.P95MS * float64(time.Millisecond))
		}
		snap.Gateway = gm
	}
	return snap, nil
}
