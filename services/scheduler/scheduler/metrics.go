package scheduler

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
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
