package store_test

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgserver"
	"github.com/agentserver/agentserver/pkg/store"
)

// TestReadReplica runs the store against a real streaming replica: a primary started by
// pgserver, a standby made with pg_basebackup -R and started by pgserver on another
// port. It proves that List reads go to the replica (they miss what the primary wrote
// while the replica's replay is paused, which Get sees), that they fall back to the
// primary when the replica is stopped, and that they return to it once it is back.
func TestReadReplica(t *testing.T) {
	if os.Getenv("AGENTSERVER_TEST_DATABASE_URL") != "" {
		t.Skip("AGENTSERVER_TEST_DATABASE_URL is set: this test starts its own primary and replica")
	}
	t.Parallel()
	ctx := t.Context()
	var primary *pgserver.Server
	// postgres runs as the postgres OS user when the tests run as root: it must reach
	// the data directories below this one (t.TempDir's parent is private).
	dir, err := os.MkdirTemp("", "agentserver-replica-test-*")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o711))

	primary, err = pgserver.Start(ctx, pgserver.Options{
		DataDir: filepath.Join(dir, "primary"), Ephemeral: true, Database: "app",
		// wal_level replica is the default; full_page_writes must be on for a base
		// backup whose WAL the standby replays (Ephemeral turns it off).
		Settings: map[string]string{"wal_level": "replica", "full_page_writes": "on", "max_wal_senders": "4"},
	})
	require.NoError(t, err)
	t.Cleanup(func() { stopServer(t, primary) })

	replicaDir := filepath.Join(dir, "replica")
	baseBackup(t, primary, replicaDir)
	replica, err := pgserver.Start(ctx, pgserver.Options{
		DataDir: replicaDir, Ephemeral: true, Settings: map[string]string{"hot_standby": "on"},
	})
	require.NoError(t, err)
	t.Cleanup(func() { stopServer(t, replica) })
	replicaPort := replica.Port()

	primaryURL := primary.URL("app")
	require.NoError(t, store.Migrate(ctx, primaryURL))
	st, err := store.Open(ctx, primaryURL,
		store.WithReadReplica(replica.URL("app")), store.WithReplicaProbeInterval(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	require.True(t, st.ReadReplicaUp())

	listIDs := func() []string {
		t.Helper()
		list, err := st.ListAssistants(ctx, tenant, 100, "")
		require.NoError(t, err)
		ids := make([]string, len(list))
		for i, a := range list {
			ids[i] = a.ID
		}
		return ids
	}
	// waitReplicated waits until the replica itself (not the store, which falls back to
	// the primary while the replica lacks the schema) holds assistant id.
	waitReplicated := func(replicaURL, id string) {
		t.Helper()
		conn, err := pgx.Connect(ctx, replicaURL)
		require.NoError(t, err)
		defer conn.Close(context.WithoutCancel(ctx))
		waitFor(t, 30*time.Second, id+" replicated", func() bool {
			var n int
			err := conn.QueryRow(ctx, "SELECT count(*) FROM assistants WHERE id = $1", id).Scan(&n)
			return err == nil && n == 1
		})
	}

	// The replica catches up with the migrations and the first assistant.
	newAssistant(t, st, "a", nil)
	waitReplicated(replica.URL("app"), "a")
	require.Contains(t, listIDs(), "a")
	// Every List method reads through the replica path.
	_, err = st.ListRuns(ctx, tenant, store.RunFilter{}, 10, nil)
	require.NoError(t, err)
	_, err = st.ListThreads(ctx, tenant, 10, nil)
	require.NoError(t, err)
	_, err = st.ListWorkers(ctx, true, 10, "")
	require.NoError(t, err)

	// Routing: with replay paused, List misses what Get (on the primary) sees.
	assertListsFromReplica := func(replicaURL, id string) {
		t.Helper()
		conn, err := pgx.Connect(ctx, replicaURL)
		require.NoError(t, err)
		defer conn.Close(context.WithoutCancel(ctx))
		_, err = conn.Exec(ctx, "SELECT pg_wal_replay_pause()")
		require.NoError(t, err)
		newAssistant(t, st, id, nil)
		got, err := st.GetAssistant(ctx, tenant, id)
		require.NoError(t, err, "Get reads the primary")
		require.Equal(t, id, got.ID)
		require.NotContains(t, listIDs(), id, "List reads the replica, whose replay is paused")
		_, err = conn.Exec(ctx, "SELECT pg_wal_replay_resume()")
		require.NoError(t, err)
		waitReplicated(replicaURL, id)
		require.Contains(t, listIDs(), id)
	}
	assertListsFromReplica(replica.URL("app"), "b")

	// The replica goes away: reads still succeed, from the primary, and see everything.
	stopServer(t, replica)
	newAssistant(t, st, "c", nil)
	require.Subset(t, listIDs(), []string{"a", "b", "c"})
	require.False(t, st.ReadReplicaUp(), "a failed read marks the replica down")
	for range 5 {
		require.Subset(t, listIDs(), []string{"a", "b", "c"})
	}

	// It comes back (on its port, as the URL says): the probe notices, reads return.
	replica, err = pgserver.Start(ctx, pgserver.Options{
		DataDir: replicaDir, Port: replicaPort, Ephemeral: true, Settings: map[string]string{"hot_standby": "on"},
	})
	require.NoError(t, err)
	waitFor(t, 30*time.Second, "replica up again", st.ReadReplicaUp)
	waitReplicated(replica.URL("app"), "c")
	assertListsFromReplica(replica.URL("app"), "d")
}

// baseBackup clones primary into dir with pg_basebackup -R (a standby.signal and the
// primary_conninfo of a streaming replica), as the postgres OS user when root.
func baseBackup(t *testing.T, primary *pgserver.Server, dir string) {
	t.Helper()
	binDir, err := pgserver.FindBinDir()
	require.NoError(t, err)
	require.NoError(t, os.Mkdir(dir, 0o700))
	cmd := exec.CommandContext(t.Context(), filepath.Join(binDir, "pg_basebackup"),
		"-h", "127.0.0.1", "-p", strconv.Itoa(primary.Port()), "-U", pgserver.Superuser,
		"-D", dir, "-R", "-X", "stream", "--checkpoint=fast", "--no-sync")
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		require.NoError(t, err, "running as root: pg_basebackup runs as the postgres user")
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		require.NoError(t, os.Chown(dir, uid, gid))
		// pgserver writes the server's log as root; the walsender that streams the
		// base backup reads every file of the data directory as postgres.
		logs, _ := filepath.Glob(filepath.Join(primary.DataDir(), "log", "*"))
		for _, f := range logs {
			require.NoError(t, os.Chown(f, uid, gid))
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	cmd.Env = append(os.Environ(), "PGAPPNAME=replica-test")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "pg_basebackup: %s", out)
}

func stopServer(t *testing.T, s *pgserver.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Errorf("stopping postgres: %v", err)
	}
}

// waitFor polls cond every 20 ms until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", timeout, what)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("test ended while waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
