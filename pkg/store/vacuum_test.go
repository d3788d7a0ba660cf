package store_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/store"
)

// Claimed runs leave dead entries at the head of run_queue_claim, which every later claim
// reads past until a vacuum removes them: VacuumQueue takes the claim scan back to a few
// pages.
func TestVacuumQueueClearsTheHeadOfTheClaimIndex(t *testing.T) {
	st := benchStore(t)
	ctx := t.Context()
	noQueueAutovacuum(t, st)
	fillQueue(t, st, 30000)
	for claimed := 0; claimed < 25000; {
		claims, err := st.ClaimRuns(ctx, store.ClaimParams{WorkerID: "w1", SlotType: "cpu", Limit: 500, LeaseTTL: time.Minute})
		require.NoError(t, err)
		require.NotEmpty(t, claims)
		claimed += len(claims)
	}
	vacuums := func() (n int64) {
		require.NoError(t, st.Pool().QueryRow(ctx, `SELECT sum(vacuum_count) FROM pg_stat_user_tables
			WHERE relname IN ('run_queue', 'run_leases')`).Scan(&n))
		return n
	}
	before, vacuumsBefore := claimScanPages(t, st), vacuums()

	noOlderSnapshots(t, st)
	require.NoError(t, st.VacuumQueue(ctx))

	after := claimScanPages(t, st)
	t.Logf("pages read by a claim scan of one run: %d with 25,000 claimed runs behind it, %d after VacuumQueue", before, after)
	require.Greater(t, before, 10*after, "the scan reads past the dead entries before the vacuum and not after")
	require.Equal(t, vacuumsBefore+2, vacuums(), "run_queue and run_leases are vacuumed")
}

// noOlderSnapshots waits until no other backend of st's database holds a snapshot (one
// taken now is newer than every claim above, which committed). A vacuum keeps the rows
// that an older snapshot may still see, and their index entries with them: an
// auto-analyze of runs (the tests' autovacuum_naptime is 5 s) that began during the
// claims left a claim scan 12 pages after VacuumQueue instead of 5, on a loaded machine.
func noOlderSnapshots(t *testing.T, st *store.Store) {
	t.Helper()
	require.Eventually(t, func() bool {
		var n int
		err := st.Pool().QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_xmin IS NOT NULL`).Scan(&n)
		// assert, not require: the condition runs on a goroutine of its own.
		return assert.NoError(t, err) && n == 0
	}, 30*time.Second, 10*time.Millisecond, "a backend of this database still holds a snapshot")
}

// claimScanPages returns the buffers a claim's candidate scan of one run touches.
func claimScanPages(t *testing.T, st *store.Store) int {
	t.Helper()
	return explainBuffers(t, st, 1, `SELECT q.run_id FROM run_queue q
		WHERE q.slot_type = 'cpu' AND NOT q.limited AND q.available_time <= now()
		ORDER BY q.priority DESC, q.seq LIMIT 1 FOR UPDATE OF q SKIP LOCKED`)
}

// explainBuffers runs query times under EXPLAIN (ANALYZE, BUFFERS) in one transaction,
// rolled back so that the row locks of a FOR UPDATE go, and returns the shared buffers the
// last run touched (statements run inside a function included).
func explainBuffers(t *testing.T, st *store.Store, times int, query string, args ...any) int {
	t.Helper()
	tx, err := st.Pool().Begin(t.Context())
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(t.Context()) }()
	var plan []struct {
		Plan struct {
			Hit  int `json:"Shared Hit Blocks"`
			Read int `json:"Shared Read Blocks"`
		}
	}
	for range times {
		var out []byte
		require.NoError(t, tx.QueryRow(t.Context(), `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) `+query, args...).Scan(&out))
		require.NoError(t, json.Unmarshal(out, &plan))
	}
	return plan[0].Plan.Hit + plan[0].Plan.Read
}

// VacuumQueue leaves the queue tables their pages (migration 13): truncating them would
// take an ACCESS EXCLUSIVE lock that stops every claim and completion, only for the pages
// to be extended again by the next runs.
func TestVacuumQueueDoesNotTruncateTheQueue(t *testing.T) {
	st := benchStore(t)
	ctx := t.Context()
	noQueueAutovacuum(t, st) // an autovacuum may truncate; only VacuumQueue is under test
	fillQueue(t, st, 3000)
	for {
		claims, err := st.ClaimRuns(ctx, store.ClaimParams{WorkerID: "w1", SlotType: "cpu", Limit: 500, LeaseTTL: time.Minute})
		require.NoError(t, err)
		if len(claims) == 0 {
			break
		}
	}
	size := func() (n int64) {
		require.NoError(t, st.Pool().QueryRow(ctx, `SELECT pg_relation_size('run_queue')`).Scan(&n))
		return n
	}
	before := size()
	require.Positive(t, before)

	noOlderSnapshots(t, st) // else the rows stay and there is nothing to truncate
	require.NoError(t, st.VacuumQueue(ctx))

	require.Equal(t, before, size(), "the emptied pages of run_queue stay (no truncation)")
	var empty bool
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT NOT EXISTS (SELECT 1 FROM run_queue)`).Scan(&empty))
	require.True(t, empty, "every queued run was claimed")
}

// noQueueAutovacuum turns autovacuum off for run_queue and run_leases in st's own
// database: autovacuum (every 5 s on the test server) would clear the dead entries that
// claims leave while a test or benchmark measures them or the vacuums that remove them.
func noQueueAutovacuum(tb testing.TB, st *store.Store) {
	tb.Helper()
	_, err := st.Pool().Exec(tb.Context(), `ALTER TABLE run_queue SET (autovacuum_enabled = off);
		ALTER TABLE run_leases SET (autovacuum_enabled = off)`)
	require.NoError(tb, err)
}
