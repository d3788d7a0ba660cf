package store

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgtest"
)

// The queue vacuum starts no parallel workers, even once the queue's indexes are large
// enough for PostgreSQL to start them by default (the control below shows that they are).
// Parallel vacuum reports its workers at DEBUG2 when VERBOSE is not given.
func TestVacuumQueueStartsNoParallelWorkers(t *testing.T) {
	ctx := t.Context()
	url := pgtest.NewDatabase(t)
	require.NoError(t, Migrate(ctx, url))
	cfg, err := pgx.ParseConfig(url)
	require.NoError(t, err)
	var mu sync.Mutex
	var notices []string
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		defer mu.Unlock()
		notices = append(notices, n.Message)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	_, err = conn.Exec(ctx, `INSERT INTO run_queue (run_id, seq, tenant_id, assistant_id, slot_type, priority)
		SELECT gen_random_uuid(), g, 'default', 'a', 'cpu', 0 FROM generate_series(1, 60000) g`)
	require.NoError(t, err)
	workers := func(vacuum string) []string {
		t.Helper()
		// Dead rows at the head of the queue, as claims leave them.
		_, err := conn.Exec(ctx, `DELETE FROM run_queue WHERE seq IN (SELECT seq FROM run_queue ORDER BY seq LIMIT 5000)`)
		require.NoError(t, err)
		mu.Lock()
		notices = nil
		mu.Unlock()
		_, err = conn.Exec(ctx, `SET client_min_messages = debug2`)
		require.NoError(t, err)
		_, err = conn.Exec(ctx, vacuum)
		require.NoError(t, err)
		_, err = conn.Exec(ctx, `RESET client_min_messages`)
		require.NoError(t, err)
		mu.Lock()
		defer mu.Unlock()
		var launched []string
		for _, n := range notices {
			if strings.Contains(n, "parallel vacuum worker") {
				launched = append(launched, n)
			}
		}
		return launched
	}

	require.NotEmpty(t, workers(`VACUUM (SKIP_LOCKED) run_queue, run_leases`),
		"control: by default the vacuum of this queue starts parallel workers")
	require.Empty(t, workers(vacuumQueue))
}
