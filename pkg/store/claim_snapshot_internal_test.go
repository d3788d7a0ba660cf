package store

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgtest"
)

// A claim whose candidate scan (a volatile function: its query sees what committed after
// the claim statement's snapshot) chooses a run promoted on its thread after that snapshot
// leaves the run queued, its queue row in place, and the next claim takes it. The claim
// used to claim it and leave its queue row behind: a RUNNING run in the queue, which the
// next claim chose and, when the first had not yet committed, locked without claiming it
// (the lock that closed a deadlock with the run's finish). Here the candidate scan is held
// on an advisory lock after the claim statement took its snapshot, while the transaction
// that ends the thread's active run, begun before the claim, commits.
func TestClaimLeavesQueueRowsNewerThanItsSnapshot(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := pgtest.NewDatabase(t)
	require.NoError(t, Migrate(ctx, url))
	st, err := Open(ctx, url)
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.CreateAssistant(ctx, &Assistant{TenantID: DefaultTenant, ID: "a", SlotType: "cpu",
		Flow: "executors:\n  - name: echo\n    command: [\"true\"]\n"})
	require.NoError(t, err)
	_, err = st.CreateThread(ctx, DefaultTenant, "t", nil, nil)
	require.NoError(t, err)
	defaults := RunDefaults{MaxAttempts: 1, Timeout: time.Hour, MaxTimeout: 24 * time.Hour}
	runs, err := st.CreateRuns(ctx, DefaultTenant, []NewRun{
		{AssistantID: "a", ThreadID: "t"},
		{AssistantID: "a", ThreadID: "t", Multitask: MultitaskEnqueue},
	}, defaults)
	require.NoError(t, err)
	active, waiting := runs[0], runs[1]
	claims, err := st.ClaimRuns(ctx, ClaimParams{WorkerID: "w0", SlotType: "cpu", Limit: 10, LeaseTTL: time.Minute})
	require.NoError(t, err)
	require.Len(t, claims, 1)
	require.Equal(t, active.ID, claims[0].Run.ID)

	// The active run ends in a transaction that began before the claim (so the queue row
	// it gives the promoted run is available from a time before the claim's now()) and
	// commits while the claim statement waits at the gate: after its snapshot, before its
	// candidate scan.
	finish, err := st.Pool().Begin(ctx)
	require.NoError(t, err)
	defer finish.Rollback(context.Background())
	_, err = finish.Exec(ctx, `UPDATE runs SET state = 3, end_time = now() WHERE id = $1`, active.ID)
	require.NoError(t, err)
	var promoted int
	require.NoError(t, finish.QueryRow(ctx, `SELECT count(*) FROM run_queue WHERE run_id = $1`, waiting.ID).Scan(&promoted))
	require.Equal(t, 1, promoted, "the waiting run is promoted")

	// The candidate scan, held until the gate opens.
	_, err = st.Pool().Exec(ctx, `CREATE FUNCTION test_gated_candidates(p_slot_type text, p_limit integer, p_max_gpu_memory bigint)
		RETURNS SETOF uuid LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM pg_advisory_lock(4242);
			PERFORM pg_advisory_unlock(4242);
			RETURN QUERY SELECT * FROM agentserver_claim_candidates(p_slot_type, p_limit, p_max_gpu_memory);
		END;
		$$`)
	require.NoError(t, err)
	gate, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer gate.Close(context.Background())
	_, err = gate.Exec(ctx, `SELECT pg_advisory_lock(4242)`)
	require.NoError(t, err)
	claimer, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer claimer.Close(context.Background())
	var claimerPID int
	require.NoError(t, claimer.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&claimerPID))

	type result struct {
		claimed int
		err     error
	}
	done := make(chan result, 1)
	go func() {
		rows, err := claimer.Query(context.Background(), claimStatement(`cand AS (
				SELECT c.run_id FROM test_gated_candidates($1, $4, $5) AS c(run_id)
			),`, "ANY(ARRAY(SELECT run_id FROM cand))", "false"),
			"cpu", "w1", int64(60000), 10, nil)
		n := 0
		if err == nil {
			for rows.Next() {
				n++
			}
			err = rows.Err()
		}
		done <- result{n, err}
	}()
	// The claim statement has its snapshot once it waits at the gate.
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, st.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE pid = $1 AND wait_event_type = 'Lock' AND wait_event = 'advisory'`, claimerPID).Scan(&n))
		return n == 1
	}, 20*time.Second, 5*time.Millisecond)

	require.NoError(t, finish.Commit(ctx))
	_, err = gate.Exec(ctx, `SELECT pg_advisory_unlock(4242)`)
	require.NoError(t, err)
	r := <-done
	require.NoError(t, r.err)
	require.Zero(t, r.claimed, "the claim took a run whose queue row is newer than its snapshot")

	// Every queue row is a QUEUED run's; the waiting run is queued once and claimed next.
	var stray int
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT count(*) FROM run_queue q JOIN runs r ON r.id = q.run_id
		WHERE r.state <> 1`).Scan(&stray))
	require.Zero(t, stray, "queue rows of runs that are not QUEUED")
	claims, err = st.ClaimRuns(ctx, ClaimParams{WorkerID: "w2", SlotType: "cpu", Limit: 10, LeaseTTL: time.Minute})
	require.NoError(t, err)
	require.Len(t, claims, 1)
	require.Equal(t, waiting.ID, claims[0].Run.ID)
	require.EqualValues(t, 1, claims[0].Run.Epoch, "claimed once")
	var queued int
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT count(*) FROM run_queue`).Scan(&queued))
	require.Zero(t, queued)
}
