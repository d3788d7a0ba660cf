package api

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/pkg/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Concurrent creates share transactions, yet each caller gets its own answer: a run of an
// unknown assistant or thread fails alone, and a repeated request id yields one run.
func TestCreateBatcherIsolatesFailures(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	require.NoError(t, store.Migrate(t.Context(), url))
	st, err := store.Open(t.Context(), url)
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.CreateAssistant(t.Context(), &store.Assistant{TenantID: store.DefaultTenant, ID: "a",
		Flow: "executors:\n  - name: x\n    command: [\"true\"]\n", SlotType: "cpu"})
	require.NoError(t, err)

	b := newCreateBatcher(st, store.RunDefaults{MaxAttempts: 1, Timeout: time.Hour, MaxTimeout: time.Hour}, 16)
	t.Cleanup(b.close)
	const n = 120
	type answer struct {
		run *store.Run
		err error
	}
	answers := make([]answer, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := store.NewRun{AssistantID: "a", Input: map[string]any{"i": float64(i)}} // as the API's structpb gives numbers
			switch {
			case i%10 == 3:
				r.AssistantID = "ghost"
			case i%10 == 5:
				r.ThreadID = "nowhere"
			case i%10 == 7:
				r.RequestID = "same-request"
			}
			run, err := b.create(t.Context(), store.DefaultTenant, r)
			answers[i] = answer{run, err}
		}()
	}
	wg.Wait()
	shared := map[uuid.UUID]bool{}
	for i, a := range answers {
		switch i % 10 {
		case 3:
			var nf *store.AssistantNotFoundError
			require.ErrorAs(t, a.err, &nf, "run %d", i)
		case 5:
			var nf *store.ThreadNotFoundError
			require.ErrorAs(t, a.err, &nf, "run %d", i)
		case 7:
			require.NoError(t, a.err, "run %d", i)
			shared[a.run.ID] = true
		default:
			require.NoError(t, a.err, "run %d", i)
			require.Equal(t, float64(i), a.run.Input["i"], fmt.Sprintf("run %d got its own run back", i))
		}
	}
	require.Len(t, shared, 1, "one run for one request id")
	all, err := st.ListRuns(t.Context(), store.DefaultTenant, store.RunFilter{}, 1000, nil)
	require.NoError(t, err)
	require.Len(t, all, n-3*n/10+1)
}
