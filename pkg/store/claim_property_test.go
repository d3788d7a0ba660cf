package store_test

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/agentserver/agentserver/pkg/store"
)

// Many claimers with mixed slot types and batch sizes work through a queue of mixed
// priorities and assistants, some with concurrency limits, finishing what they claim at
// random: no run is claimed twice, every claim batch comes out in priority-then-submission
// order, no limited assistant ever has more runs out than its limit, and every run is
// claimed in the end.
func TestClaimPathProperties(t *testing.T) {
	t.Parallel()
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	st := newStore(t)
	limits := map[string]int32{"lim1": 1, "lim3": 3}
	assistants := map[string]string{"free-cpu": "cpu", "free-gpu": "gpu", "lim1": "cpu", "lim3": "gpu"}
	for id, slot := range assistants {
		newAssistant(t, st, id, func(a *store.Assistant) { a.SlotType = slot; a.ConcurrencyLimit = limits[id] })
	}
	ids := []string{"free-cpu", "free-gpu", "lim1", "lim3"}
	const total = 400
	batch := make([]store.NewRun, total)
	for i := range batch {
		batch[i] = store.NewRun{AssistantID: ids[rng.IntN(len(ids))], Priority: prio(int32(rng.IntN(3)))}
	}
	created := enqueue(t, st, batch...)
	seq := make(map[uuid.UUID]int, total) // submission order
	for i, r := range created {
		seq[r.ID] = i
	}

	var mu sync.Mutex
	claimedBy := make(map[uuid.UUID]string)
	out := map[string]int32{} // runs of each limited assistant claimed and not yet finished
	var violations []string
	var g errgroup.Group
	for w := range 6 {
		worker := fmt.Sprintf("w%d", w)
		wrng := rand.New(rand.NewPCG(seed, uint64(w)))
		g.Go(func() error {
			var held []*store.Claim
			idle := 0
			for idle < 20 {
				slot := []string{"cpu", "gpu"}[wrng.IntN(2)]
				cs, err := st.ClaimRuns(t.Context(), store.ClaimParams{WorkerID: worker, SlotType: slot, Limit: 1 + wrng.IntN(5), LeaseTTL: time.Minute})
				if err != nil {
					return err
				}
				mu.Lock()
				for i, c := range cs {
					if prev, dup := claimedBy[c.Run.ID]; dup {
						violations = append(violations, fmt.Sprintf("run %s claimed by %s and %s", c.Run.ID, prev, worker))
					}
					claimedBy[c.Run.ID] = worker
					if c.Run.SlotType != slot {
						violations = append(violations, fmt.Sprintf("%s run handed to a %s claim", c.Run.SlotType, slot))
					}
					if i > 0 {
						p, q := cs[i-1].Run, c.Run
						if p.Priority < q.Priority || (p.Priority == q.Priority && seq[p.ID] > seq[q.ID]) {
							violations = append(violations, "claim batch out of priority-then-submission order")
						}
					}
					if lim, ok := limits[c.Run.AssistantID]; ok {
						out[c.Run.AssistantID]++
						if out[c.Run.AssistantID] > lim {
							violations = append(violations, fmt.Sprintf("%s has %d runs out, limit %d", c.Run.AssistantID, out[c.Run.AssistantID], lim))
						}
					}
				}
				mu.Unlock()
				held = append(held, cs...)
				if len(cs) == 0 {
					idle++
				} else {
					idle = 0
				}
				// Finish a random part of what this worker holds.
				wrng.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
				n := wrng.IntN(len(held) + 1)
				if len(cs) == 0 {
					n = len(held)
				}
				for _, c := range held[:n] {
					mu.Lock()
					if _, ok := limits[c.Run.AssistantID]; ok {
						// Counted down before the commit and up after the claim committed, so this
						// count never exceeds the database's: an excess here is a real one.
						out[c.Run.AssistantID]--
					}
					mu.Unlock()
					if _, err := st.FinishRun(t.Context(), store.FinishParams{RunID: c.Run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeSucceeded, State: map[string]any{}}); err != nil {
						return err
					}
				}
				held = held[n:]
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	require.Empty(t, violations)
	require.Len(t, claimedBy, total, "every run claimed once")
}
