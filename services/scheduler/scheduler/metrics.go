package scheduler

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/agentserver/agentserver/pkg/store"
)

// claimsTotal counts the dispatcher's claim statements. Empty claims (found="false") are
// the cost of waking for runs another claim took or that no free slot can take; they
// should stay few next to the claims that find runs.
var claimsTotal = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "agentserver_scheduler_claims_total",
	Help: "Claim statements made by the scheduler's dispatcher, by slot type and by whether they found runs.",
}, []string{"slot_type", "found"})

// countClaim counts a claim for slotType that found n runs.
func countClaim(slotType string, n int) {
	claimsTotal.WithLabelValues(slotType, strconv.FormatBool(n > 0)).Inc()
}

// clusterCollector reports, at each scrape of the admin endpoint, what GetClusterStats
// reports: the queue's depth and the runs running by slot type, and each pool's workers
// and slots, cluster-wide (every scheduler of a cluster reports the same figures). It
// reads them from the database when scraped, so it costs nothing between scrapes.
type clusterCollector struct {
	stats   func(context.Context) ([]store.SlotTypeStats, []store.PoolStats, error)
	timeout time.Duration
}

var (
	runsDesc = prometheus.NewDesc("agentserver_runs",
		"Unfinished runs, cluster-wide, by slot type and state: queued (runnable, waiting for a slot; with delayed, the queue's depth), delayed (waiting for a retry's backoff), running (holding a slot).",
		[]string{"slot_type", "state"}, nil)
	poolSlotsDesc = prometheus.NewDesc("agentserver_pool_slots",
		"Slots of a pool's live workers by type: total and used (utilisation is used ÷ total).",
		[]string{"pool", "slot_type", "state"}, nil)
	poolWorkersDesc = prometheus.NewDesc("agentserver_pool_workers",
		"Live workers of a pool: ready (taking runs) and draining (finishing theirs before they go).",
		[]string{"pool", "state"}, nil)
)

func (c clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- runsDesc
	ch <- poolSlotsDesc
	ch <- poolWorkersDesc
}

func (c clusterCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	types, pools, err := c.stats(ctx)
	if err != nil {
		// Served as a scrape error (logged); the other metrics are still served.
		ch <- prometheus.NewInvalidMetric(runsDesc, fmt.Errorf("reading cluster statistics: %w", err))
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, t := range types {
		gauge(runsDesc, float64(t.Queued), t.SlotType, "queued")
		gauge(runsDesc, float64(t.Delayed), t.SlotType, "delayed")
		gauge(runsDesc, float64(t.Running), t.SlotType, "running")
	}
	for _, p := range pools {
		gauge(poolWorkersDesc, float64(p.WorkersReady), p.Pool, "ready")
		gauge(poolWorkersDesc, float64(p.WorkersDraining), p.Pool, "draining")
		for _, sc := range p.Slots {
			gauge(poolSlotsDesc, float64(sc.Total), p.Pool, sc.Type, "total")
			gauge(poolSlotsDesc, float64(sc.Used), p.Pool, sc.Type, "used")
		}
	}
}
