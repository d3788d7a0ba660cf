package store_test

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/store"
)

// A claim updates its runs in place (HOT: no index of runs gains an entry), so each run's
// new version is on the page the run was created on. Claims take runs created side by side,
// many at a time as a busy worker's claims do, and their new versions must fit on those
// pages next to the versions they replace until the claim commits (migration 18).
// (Completions need those old versions pruned first, which an open transaction in any
// database of the server can hold back: not asserted here, where other tests run.)
func TestClaimsUpdateRunsInPlace(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	const n, batch = 2000, 64
	runs := make([]store.NewRun, n)
	for i := range runs {
		runs[i] = store.NewRun{AssistantID: "a", Input: map[string]any{"i": i}}
	}
	for i := 0; i < n; i += 500 { // as BatchCreateRuns does
		enqueue(t, st, runs[i:i+500]...)
	}
	pages := func() map[uuid.UUID]string {
		rows, err := st.Pool().Query(t.Context(), `SELECT id, (ctid::text::point)[0]::bigint::text FROM runs`)
		require.NoError(t, err)
		defer rows.Close()
		out := map[uuid.UUID]string{}
		for rows.Next() {
			var id uuid.UUID
			var page string
			require.NoError(t, rows.Scan(&id, &page))
			out[id] = page
		}
		require.NoError(t, rows.Err())
		return out
	}
	before := pages()
	require.Len(t, before, n)

	for claimed := 0; claimed < n; {
		cs := claim(t, st, "w", "cpu", batch)
		require.NotEmpty(t, cs)
		claimed += len(cs)
	}

	moved := 0
	for id, page := range pages() {
		if before[id] != page {
			moved++
		}
	}
	require.LessOrEqual(t, moved, n/50, "runs whose claim moved them to another page (not HOT)")
}
