package store_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/pkg/store"
)

// The gateways' way to PostgreSQL in a large deployment (deploy/pgbouncer/pgbouncer.ini):
// a real PgBouncer in transaction mode, 8 clients sharing 2 server connections, pgx's
// statements sent unnamed (default_query_exec_mode=cache_describe: PgBouncer before 1.21,
// such as Debian 12's 1.18, does not carry named prepared statements from one server
// connection to another, and the named ones fail with "prepared statement … already
// exists" or "does not exist"). Migrations, creates, claims, results and reads go through
// it, and every run ends SUCCEEDED with its input intact.
func TestStoreThroughPgBouncerInTransactionMode(t *testing.T) {
	t.Parallel()
	direct := pgtest.NewDatabase(t)
	via := pgtest.PgBouncer(t, direct, "transaction", 2) + "&default_query_exec_mode=cache_describe"
	require.NoError(t, store.Migrate(t.Context(), via), "a gateway starting alone migrates through PgBouncer")
	st, err := store.Open(t.Context(), via)
	require.NoError(t, err)
	t.Cleanup(st.Close)
	newAssistant(t, st, "a", nil)

	finish := func(claims []*store.Claim) error {
		params := make([]store.FinishParams, len(claims))
		for i, c := range claims {
			params[i] = store.FinishParams{RunID: c.Run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeSucceeded, State: c.State}
		}
		_, errs, err := st.FinishRuns(t.Context(), params)
		if err != nil {
			return err
		}
		return errors.Join(errs...)
	}
	var mu sync.Mutex
	inputs := make(map[uuid.UUID]map[string]any)
	var g errgroup.Group
	for w := range 8 {
		g.Go(func() error {
			for i := range 25 {
				in := map[string]any{"client": float64(w), "call": float64(i)}
				runs, err := st.CreateRuns(t.Context(), tenant, []store.NewRun{{AssistantID: "a", Input: in}, {AssistantID: "a"}}, defaults)
				if err != nil {
					return fmt.Errorf("client %d, create %d: %w", w, i, err)
				}
				mu.Lock()
				inputs[runs[0].ID], inputs[runs[1].ID] = in, map[string]any{}
				mu.Unlock()
				claims, err := st.ClaimRuns(t.Context(), store.ClaimParams{WorkerID: fmt.Sprintf("w%d", w), SlotType: "cpu", Limit: 4, LeaseTTL: time.Minute})
				if err != nil {
					return fmt.Errorf("client %d, claim %d: %w", w, i, err)
				}
				if err := finish(claims); err != nil {
					return fmt.Errorf("client %d, results %d: %w", w, i, err)
				}
				if _, err := st.GetRun(t.Context(), tenant, runs[0].ID); err != nil {
					return fmt.Errorf("client %d, read %d: %w", w, i, err)
				}
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	for {
		claims, err := st.ClaimRuns(t.Context(), store.ClaimParams{WorkerID: "drain", SlotType: "cpu", Limit: 100, LeaseTTL: time.Minute})
		require.NoError(t, err)
		if len(claims) == 0 {
			break
		}
		require.NoError(t, finish(claims))
	}
	require.Len(t, inputs, 8*25*2)
	for id, in := range inputs {
		r, err := st.GetRun(t.Context(), tenant, id)
		require.NoError(t, err)
		require.Equal(t, store.StateSucceeded, r.State, "run %s", id)
		require.Equal(t, in, r.Input, "run %s", id)
	}
}
