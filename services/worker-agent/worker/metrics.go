package worker

import (
	"maps"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	workerSlotsDesc = prometheus.NewDesc("agentserver_worker_slots",
		"This worker's slots by type: total, and used by the runs it is executing (the scheduler's agentserver_pool_slots sums them per pool).",
		[]string{"slot_type", "state"}, nil)
	workerDrainingDesc = prometheus.NewDesc("agentserver_worker_draining",
		"1 while this worker drains (it takes no new runs and finishes its own before it goes), else 0.",
		nil, nil)
)

// slotsCollector reports the worker's slots on its admin endpoint, read at each scrape.
type slotsCollector struct{ w *Worker }

func (c slotsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- workerSlotsDesc
	ch <- workerDrainingDesc
}

func (c slotsCollector) Collect(ch chan<- prometheus.Metric) {
	w := c.w
	w.mu.Lock()
	total, used := maps.Clone(w.slots), maps.Clone(w.used)
	draining := w.draining
	w.mu.Unlock()
	for _, t := range slices.Sorted(maps.Keys(total)) {
		ch <- prometheus.MustNewConstMetric(workerSlotsDesc, prometheus.GaugeValue, float64(total[t]), t, "total")
		ch <- prometheus.MustNewConstMetric(workerSlotsDesc, prometheus.GaugeValue, float64(used[t]), t, "used")
	}
	d := 0.0
	if draining {
		d = 1
	}
	ch <- prometheus.MustNewConstMetric(workerDrainingDesc, prometheus.GaugeValue, d)
}
