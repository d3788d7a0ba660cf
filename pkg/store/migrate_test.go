package store

import (
	"database/sql"
	"io/fs"
	"testing"
	"time"

	"github.com/pressly/goose/v3"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgtest"
)

// migrationProvider opens a fresh database and a goose provider of the store's
// migrations on it, none applied.
func migrationProvider(t *testing.T) (*sql.DB, *goose.Provider) {
	t.Helper()
	db, err := sql.Open("pgx", pgtest.NewDatabase(t))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	sub, err := fs.Sub(migrations, "migrations")
	require.NoError(t, err)
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub)
	require.NoError(t, err)
	return db, p
}

// queryMap runs a query of two columns and returns its rows as a map of the first to the
// second.
func queryMap[K comparable, V any](t *testing.T, db *sql.DB, query string) map[K]V {
	t.Helper()
	rows, err := db.QueryContext(t.Context(), query)
	require.NoError(t, err)
	defer rows.Close()
	out := map[K]V{}
	for rows.Next() {
		var k K
		var v V
		require.NoError(t, rows.Scan(&k, &v))
		out[k] = v
	}
	require.NoError(t, rows.Err())
	return out
}

// Migration 7 moves the leases of RUNNING runs into run_leases and the runs waiting on a
// thread into thread_queue; a database upgraded with runs in flight keeps every lease and
// every waiting run, and going back down restores them on runs.
func TestMigration7MovesLeasesAndWaitingRuns(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, p := migrationProvider(t)
	_, err := p.UpTo(ctx, 6)
	require.NoError(t, err)

	expire := time.Now().Add(time.Minute).UTC().Truncate(time.Microsecond)
	_, err = db.ExecContext(ctx, `INSERT INTO threads (tenant_id, id, active_run_id)
		VALUES ('default', 't', '00000000-0000-0000-0000-000000000002')`)
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `
		INSERT INTO runs (id, tenant_id, assistant_id, assistant_version, thread_id, seq, state, priority, slot_type,
			input, max_attempts, timeout_ms, epoch, worker_id, lease_expire_time, claim_time)
		VALUES
			('00000000-0000-0000-0000-000000000001', 'default', 'a', 1, NULL, 1, 2, 0, 'gpu', '{}', 1, 1000, 3, 'w1', $1, now()),
			('00000000-0000-0000-0000-000000000002', 'default', 'a', 1, 't', 2, 1, 0, 'cpu', '{}', 1, 1000, 0, NULL, NULL, NULL),
			('00000000-0000-0000-0000-000000000003', 'default', 'a', 1, 't', 3, 1, 0, 'cpu', '{}', 1, 1000, 0, NULL, NULL, NULL),
			('00000000-0000-0000-0000-000000000004', 'default', 'a', 1, NULL, 4, 3, 0, 'cpu', '{}', 1, 1000, 1, 'w1', NULL, now())`,
		expire)
	require.NoError(t, err)

	_, err = p.Up(ctx)
	require.NoError(t, err)
	var run, worker, slot string
	var epoch int64
	var got time.Time
	require.NoError(t, db.QueryRowContext(ctx, `SELECT run_id::text, epoch, worker_id, slot_type, expire_time FROM run_leases`).
		Scan(&run, &epoch, &worker, &slot, &got))
	require.Equal(t, []any{"00000000-0000-0000-0000-000000000001", int64(3), "w1", "gpu"}, []any{run, epoch, worker, slot})
	require.True(t, got.Equal(expire), "lease expiry kept: %s, want %s", got, expire)
	var waiting []string
	rows, err := db.QueryContext(ctx, `SELECT run_id::text FROM thread_queue ORDER BY seq`)
	require.NoError(t, err)
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		waiting = append(waiting, id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"00000000-0000-0000-0000-000000000003"}, waiting, "only the run behind the active one waits")

	_, err = p.DownTo(ctx, 6)
	require.NoError(t, err)
	var back time.Time
	require.NoError(t, db.QueryRowContext(ctx, `SELECT lease_expire_time FROM runs WHERE id = '00000000-0000-0000-0000-000000000001'`).Scan(&back))
	require.True(t, back.Equal(expire), "lease expiry restored on runs: %s, want %s", back, expire)
	_, err = p.Up(ctx)
	require.NoError(t, err, "migrates up again")
}

// Migration 10 turns statistics off for the payload columns of runs and run_events and
// relaxes when they are analyzed; going down restores both.
func TestMigration10StatisticsTargets(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, p := migrationProvider(t)
	settings := func() (input, data int, runsOpts, eventsOpts string) {
		// attstattarget: 0 = no statistics, -1 = the default target.
		require.NoError(t, db.QueryRowContext(ctx, `SELECT
			(SELECT attstattarget FROM pg_attribute WHERE attrelid = 'runs'::regclass AND attname = 'input'),
			(SELECT attstattarget FROM pg_attribute WHERE attrelid = 'run_events'::regclass AND attname = 'data'),
			(SELECT coalesce(array_to_string(reloptions, ','), '') FROM pg_class WHERE oid = 'runs'::regclass),
			(SELECT coalesce(array_to_string(reloptions, ','), '') FROM pg_class WHERE oid = 'run_events'::regclass)`).
			Scan(&input, &data, &runsOpts, &eventsOpts))
		return
	}

	_, err := p.UpTo(ctx, 10)
	require.NoError(t, err)
	input, data, runsOpts, eventsOpts := settings()
	require.Equal(t, 0, input)
	require.Equal(t, 0, data)
	require.NotContains(t, runsOpts, "autovacuum_analyze_scale_factor")
	require.Contains(t, runsOpts, "fillfactor=65", "migration 7's settings stay")
	require.Contains(t, eventsOpts, "autovacuum_analyze_scale_factor=0.5")

	_, err = p.DownTo(ctx, 9)
	require.NoError(t, err)
	input, data, runsOpts, eventsOpts = settings()
	require.Equal(t, -1, input)
	require.Equal(t, -1, data)
	require.Contains(t, runsOpts, "autovacuum_analyze_scale_factor=0.02")
	require.Empty(t, eventsOpts)
}

// Migration 13 keeps vacuum (the scheduler's and autovacuum) from truncating the queue
// tables, and gives the setting back on the way down.
func TestMigration13QueueTablesAreNotTruncated(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, p := migrationProvider(t)
	options := func() (queue, leases string) {
		require.NoError(t, db.QueryRowContext(ctx, `SELECT
			(SELECT coalesce(array_to_string(reloptions, ','), '') FROM pg_class WHERE oid = 'run_queue'::regclass),
			(SELECT coalesce(array_to_string(reloptions, ','), '') FROM pg_class WHERE oid = 'run_leases'::regclass)`).
			Scan(&queue, &leases))
		return
	}

	_, err := p.UpTo(ctx, 13)
	require.NoError(t, err)
	queue, leases := options()
	require.Contains(t, queue, "vacuum_truncate=false")
	require.Contains(t, queue, "autovacuum_vacuum_threshold=1000", "migration 4's settings stay")
	require.Contains(t, leases, "vacuum_truncate=false")

	_, err = p.DownTo(ctx, 12)
	require.NoError(t, err)
	queue, leases = options()
	require.NotContains(t, queue, "vacuum_truncate")
	require.Contains(t, queue, "autovacuum_vacuum_threshold=1000")
	require.NotContains(t, leases, "vacuum_truncate")
}

// Going down from migrations 11, 12 and 21 writes the QUEUED, RUNNING, step_started and
// SUCCEEDED events that runs held back into run_events, with their seq, data and time; going up again leaves the rows
// alone (the run holds no copy any more).
func TestMigrationsOfKeptEventsGoDownAsRows(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		version          int64
		columns, values  string
		seqColumn, event string
		typ              string
	}{
		{11, "create_time, queued_seq", "'2026-01-02T03:04:05Z', nextval('run_events_seq_seq')",
			"queued_seq", `{"state": "QUEUED"}`, "state"},
		{12, "claim_time, running_seq, running_event", `'2026-01-02T03:04:05Z', nextval('run_events_seq_seq'),
			'{"state": "RUNNING", "worker": "w", "attempt": 1, "epoch": 1}'`,
			"running_seq", `{"state": "RUNNING", "worker": "w", "attempt": 1, "epoch": 1}`, "state"},
		{21, "end_time, end_seq", "'2026-01-02T03:04:05Z', nextval('run_events_seq_seq')",
			"end_seq", `{"state": "SUCCEEDED"}`, "state"},
		{21, "end_time, step_seq, started_step", "'2026-01-02T03:04:05Z', nextval('run_events_seq_seq'), 'fetch'",
			"step_seq", `{"step": "fetch"}`, "step_started"},
	} {
		t.Run(tc.seqColumn, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			db, p := migrationProvider(t)
			_, err := p.UpTo(ctx, tc.version)
			require.NoError(t, err)
			_, err = db.ExecContext(ctx, `
				INSERT INTO runs (id, tenant_id, assistant_id, assistant_version, seq, state, priority, slot_type,
					input, max_attempts, timeout_ms, `+tc.columns+`)
				VALUES ('00000000-0000-0000-0000-000000000001', 'default', 'a', 1, 1, 2, 0, 'cpu', '{}', 1, 1000, `+tc.values+`)`)
			require.NoError(t, err)
			var seq int64
			require.NoError(t, db.QueryRowContext(ctx, `SELECT `+tc.seqColumn+` FROM runs`).Scan(&seq))

			_, err = p.DownTo(ctx, tc.version-1)
			require.NoError(t, err)
			var gotSeq int64
			var typ, data string
			var at time.Time
			require.NoError(t, db.QueryRowContext(ctx, `SELECT seq, type, data::text, create_time FROM run_events
				WHERE run_id = '00000000-0000-0000-0000-000000000001'`).Scan(&gotSeq, &typ, &data, &at))
			require.Equal(t, seq, gotSeq)
			require.Equal(t, tc.typ, typ)
			require.JSONEq(t, tc.event, data)
			require.True(t, at.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)))

			_, err = p.UpTo(ctx, tc.version)
			require.NoError(t, err)
			var rows int
			require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*) FROM run_events`).Scan(&rows))
			require.Equal(t, 1, rows)
		})
	}
}

// Since migration 14 a claim keeps only its RUNNING event's seq on the run; going down
// gives the run the event's data back, so that migration 12's down writes it out whole.
func TestMigration14RunningEventGoesDownWithItsData(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, p := migrationProvider(t)
	_, err := p.UpTo(ctx, 14)
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `
		INSERT INTO runs (id, tenant_id, assistant_id, assistant_version, seq, state, priority, slot_type,
			input, max_attempts, timeout_ms, worker_id, attempt, epoch, claim_time, running_seq)
		VALUES ('00000000-0000-0000-0000-000000000001', 'default', 'a', 1, 1, 2, 0, 'cpu', '{}', 3, 1000,
			'w-7', 2, 5, '2026-01-02T03:04:05Z', nextval('run_events_seq_seq'))`)
	require.NoError(t, err)

	_, err = p.DownTo(ctx, 11)
	require.NoError(t, err)
	var typ, data string
	require.NoError(t, db.QueryRowContext(ctx, `SELECT type, data::text FROM run_events
		WHERE run_id = '00000000-0000-0000-0000-000000000001'`).Scan(&typ, &data))
	require.Equal(t, "state", typ)
	require.JSONEq(t, `{"state": "RUNNING", "worker": "w-7", "attempt": 2, "epoch": 5}`, data)
}

// Migration 15 marks the queued runs of assistants that have a concurrency limit and moves
// them out of run_queue_claim; going down drops the mark and indexes every row again.
func TestMigration15MarksTheQueuedRunsOfLimitedAssistants(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, p := migrationProvider(t)
	_, err := p.UpTo(ctx, 14)
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `
		INSERT INTO assistant_load (tenant_id, assistant_id, concurrency_limit) VALUES ('default', 'held', 1);
		INSERT INTO run_queue (run_id, seq, tenant_id, assistant_id, slot_type, priority) VALUES
			('00000000-0000-0000-0000-000000000001', 1, 'default', 'held', 'cpu', 0),
			('00000000-0000-0000-0000-000000000002', 2, 'default', 'free', 'cpu', 0),
			('00000000-0000-0000-0000-000000000003', 3, 'other', 'held', 'cpu', 0)`)
	require.NoError(t, err)
	claimIndex := func() (def string) {
		require.NoError(t, db.QueryRowContext(ctx, `SELECT indexdef FROM pg_indexes WHERE indexname = 'run_queue_claim'`).Scan(&def))
		return def
	}

	_, err = p.UpTo(ctx, 15)
	require.NoError(t, err)
	marks := queryMap[int, bool](t, db, `SELECT seq, limited FROM run_queue`)
	require.Equal(t, map[int]bool{1: true, 2: false, 3: false}, marks, "only the runs of the tenant's limited assistant")
	require.Contains(t, claimIndex(), "WHERE (NOT limited)")

	_, err = p.DownTo(ctx, 14)
	require.NoError(t, err)
	require.NotContains(t, claimIndex(), "WHERE")
	var n int
	require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*) FROM run_queue`).Scan(&n))
	require.Equal(t, 3, n, "going down keeps every queued run")
}

// Migration 16: neither candidate scan of a claim is ever JIT-compiled, whatever the
// queue's size makes of its generic plan's price.
func TestMigration16ClaimScansAreNotCompiled(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, p := migrationProvider(t)
	uncompiled := func() map[string]bool {
		return queryMap[string, bool](t, db, `SELECT proname, coalesce('jit=off' = ANY(proconfig), false)
			FROM pg_proc WHERE proname LIKE 'agentserver\_claim\_candidates%'`)
	}

	_, err := p.UpTo(ctx, 16)
	require.NoError(t, err)
	require.Equal(t, map[string]bool{
		"agentserver_claim_candidates":         true,
		"agentserver_claim_candidates_limited": true,
	}, uncompiled())

	_, err = p.DownTo(ctx, 15)
	require.NoError(t, err)
	require.Equal(t, map[string]bool{
		"agentserver_claim_candidates":         false,
		"agentserver_claim_candidates_limited": true,
	}, uncompiled())
}

// Migration 17 makes autovacuum's ANALYZE of runs and run_events sample 3,000 rows, not
// 30,000: every column has a statistics target of 10, or 0 (none). The check is on the
// latest schema, so a column added later without a target of its own fails it.
func TestStatisticsSamplesStaySmall(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, p := migrationProvider(t)
	// attstattarget -1 is the default target (default_statistics_target, 100).
	targets := func(table string) map[string]int {
		return queryMap[string, int](t, db, `SELECT attname, attstattarget FROM pg_attribute
			WHERE attrelid = '`+table+`'::regclass AND attnum > 0 AND NOT attisdropped`)
	}

	_, err := p.Up(ctx)
	require.NoError(t, err)
	for _, table := range []string{"runs", "run_events"} {
		cols := targets(table)
		require.NotEmpty(t, cols)
		for col, target := range cols {
			require.Containsf(t, []int{0, 10}, target, "statistics target of %s.%s", table, col)
		}
	}
	require.Equal(t, 0, targets("runs")["input"], "migration 10's payload columns keep none")

	// The sample follows: 4,000 events give a histogram of at most 11 bounds (101 with the
	// default target).
	_, err = db.ExecContext(ctx, `INSERT INTO run_events (run_id, tenant_id, type)
		SELECT gen_random_uuid(), 't', 'e' FROM generate_series(1, 4000)`)
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `ANALYZE run_events`)
	require.NoError(t, err)
	var bounds int
	require.NoError(t, db.QueryRowContext(ctx, `SELECT array_length(histogram_bounds, 1) FROM pg_stats
		WHERE tablename = 'run_events' AND attname = 'seq'`).Scan(&bounds))
	require.LessOrEqual(t, bounds, 11)

	_, err = p.DownTo(ctx, 16)
	require.NoError(t, err)
	require.Equal(t, -1, targets("runs")["state"])
	require.Equal(t, -1, targets("run_events")["seq"])
	require.Equal(t, 0, targets("runs")["input"])
}

// Migrations 19 and 20 rebuild the list indexes of runs and threads in ascending order,
// migration 22 makes those of runs partial on a condition only listings state, and going
// down undoes each in turn.
func TestMigrationsOfTheListIndexes(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, p := migrationProvider(t)
	const (
		runs          = "CREATE INDEX runs_list ON public.runs USING btree "
		runsAssistant = "CREATE INDEX runs_list_assistant ON public.runs USING btree "
		threads       = "CREATE INDEX threads_list ON public.threads USING btree "
		partial       = " WHERE (tenant_id IS NOT NULL)"
	)
	for _, step := range []struct {
		up      bool
		version int64
		want    map[string]string
	}{
		{true, 20, map[string]string{
			"runs_list":           runs + "(tenant_id, create_time, id)",
			"runs_list_assistant": runsAssistant + "(tenant_id, assistant_id, create_time, id)",
			"threads_list":        threads + "(tenant_id, create_time, id)",
		}},
		{true, 22, map[string]string{
			"runs_list":           runs + "(tenant_id, create_time, id)" + partial,
			"runs_list_assistant": runsAssistant + "(tenant_id, assistant_id, create_time, id)" + partial,
			"threads_list":        threads + "(tenant_id, create_time, id)",
		}},
		{false, 21, map[string]string{
			"runs_list":           runs + "(tenant_id, create_time, id)",
			"runs_list_assistant": runsAssistant + "(tenant_id, assistant_id, create_time, id)",
			"threads_list":        threads + "(tenant_id, create_time, id)",
		}},
		{false, 18, map[string]string{
			"runs_list":           runs + "(tenant_id, create_time DESC, id DESC)",
			"runs_list_assistant": runsAssistant + "(tenant_id, assistant_id, create_time DESC, id DESC)",
			"threads_list":        threads + "(tenant_id, create_time DESC, id DESC)",
		}},
	} {
		var err error
		if step.up {
			_, err = p.UpTo(ctx, step.version)
		} else {
			_, err = p.DownTo(ctx, step.version)
		}
		require.NoError(t, err)
		require.Equal(t, step.want, queryMap[string, string](t, db, `SELECT indexname, indexdef FROM pg_indexes
			WHERE indexname IN ('runs_list', 'runs_list_assistant', 'threads_list')`), "at version %d", step.version)
	}
}

// Migration 24 copies the cancel requests of running runs onto their leases, where
// CancelRequests reads them; going down drops the copy and keeps the requests on runs.
func TestMigration24CopiesCancelRequestsToLeases(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, p := migrationProvider(t)
	_, err := p.UpTo(ctx, 23)
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `
		INSERT INTO runs (id, tenant_id, assistant_id, assistant_version, seq, state, priority, slot_type,
			input, max_attempts, timeout_ms, epoch, worker_id, claim_time, cancel_requested)
		VALUES
			('00000000-0000-0000-0000-000000000001', 'default', 'a', 1, 1, 2, 0, 'cpu', '{}', 1, 1000, 1, 'w1', now(), true),
			('00000000-0000-0000-0000-000000000002', 'default', 'a', 1, 2, 2, 0, 'cpu', '{}', 1, 1000, 1, 'w1', now(), false);
		INSERT INTO run_leases (run_id, epoch, worker_id, tenant_id, assistant_id, slot_type, expire_time) VALUES
			('00000000-0000-0000-0000-000000000001', 1, 'w1', 'default', 'a', 'cpu', now() + interval '1 minute'),
			('00000000-0000-0000-0000-000000000002', 1, 'w1', 'default', 'a', 'cpu', now() + interval '1 minute')`)
	require.NoError(t, err)

	_, err = p.UpTo(ctx, 24)
	require.NoError(t, err)
	flags := queryMap[string, bool](t, db, `SELECT run_id::text, cancel_requested FROM run_leases`)
	require.Equal(t, map[string]bool{
		"00000000-0000-0000-0000-000000000001": true,
		"00000000-0000-0000-0000-000000000002": false,
	}, flags)

	_, err = p.DownTo(ctx, 23)
	require.NoError(t, err)
	var requested int
	require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*) FROM runs WHERE cancel_requested`).Scan(&requested))
	require.Equal(t, 1, requested, "the request stays on its run")
	_, err = p.Up(ctx)
	require.NoError(t, err, "migrates up again")
}

// Migration 25 gives every lease its run's deadline (claim time + timeout), which recovery
// reads instead of the run.
func TestMigration25GivesLeasesTheirRunsDeadline(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, p := migrationProvider(t)
	_, err := p.UpTo(ctx, 24)
	require.NoError(t, err)
	claimed := time.Date(2026, 11, 28, 8, 0, 0, 0, time.UTC)
	_, err = db.ExecContext(ctx, `
		INSERT INTO runs (id, tenant_id, assistant_id, assistant_version, seq, state, priority, slot_type,
			input, max_attempts, timeout_ms, epoch, worker_id, claim_time)
		VALUES ('00000000-0000-0000-0000-000000000001', 'default', 'a', 1, 1, 2, 0, 'cpu', '{}', 1, 90000, 1, 'w1', $1)`, claimed)
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `
		INSERT INTO run_leases (run_id, epoch, worker_id, tenant_id, assistant_id, slot_type, expire_time) VALUES
			('00000000-0000-0000-0000-000000000001', 1, 'w1', 'default', 'a', 'cpu', now() + interval '1 minute')`)
	require.NoError(t, err)

	_, err = p.UpTo(ctx, 25)
	require.NoError(t, err)
	var deadline time.Time
	require.NoError(t, db.QueryRowContext(ctx, `SELECT deadline_time FROM run_leases`).Scan(&deadline))
	require.True(t, deadline.Equal(claimed.Add(90*time.Second)), "deadline %s, want claim time + 90 s", deadline)

	_, err = p.DownTo(ctx, 24)
	require.NoError(t, err)
	_, err = p.Up(ctx)
	require.NoError(t, err, "migrates up again")
}
