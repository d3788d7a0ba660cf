package pgtest_test

import (
	"context"
	"fmt"
	"net/url"
	"runtime"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func connect(t *testing.T, dbURL string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dbURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func databaseOf(t *testing.T, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	return u.Path[1:]
}

func TestNewDatabaseIsolated(t *testing.T) {
	t.Parallel()
	a, b := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	require.NotEqual(t, a, b)
	ca, cb := connect(t, a), connect(t, b)

	var name string
	require.NoError(t, ca.QueryRow(t.Context(), "SELECT current_database()").Scan(&name))
	require.Equal(t, databaseOf(t, a), name)
	require.Contains(t, name, "newdatabaseisolated", "the name says which test made it")

	var tables int
	require.NoError(t, ca.QueryRow(t.Context(), "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables))
	require.Zero(t, tables, "a new database is empty")
	_, err := ca.Exec(t.Context(), "CREATE TABLE runs (id int PRIMARY KEY); INSERT INTO runs VALUES (1)")
	require.NoError(t, err)
	_, err = cb.Exec(t.Context(), "CREATE TABLE runs (id int PRIMARY KEY); INSERT INTO runs VALUES (1)")
	require.NoError(t, err, "the same table in another database does not collide")
	var missing *string
	_, err = ca.Exec(t.Context(), "CREATE TABLE only_a (v int)")
	require.NoError(t, err)
	require.NoError(t, cb.QueryRow(t.Context(), "SELECT to_regclass('only_a')::text").Scan(&missing))
	require.Nil(t, missing)
}

func TestNewDatabaseInParallel(t *testing.T) {
	t.Parallel()
	for i := range 8 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			conn := connect(t, pgtest.NewDatabase(t))
			_, err := conn.Exec(t.Context(), fmt.Sprintf("CREATE TABLE t (v int); INSERT INTO t VALUES (%d)", i))
			require.NoError(t, err)
			var v int
			require.NoError(t, conn.QueryRow(t.Context(), "SELECT v FROM t").Scan(&v))
			require.Equal(t, i, v)
		})
	}
}

func TestDatabaseDroppedAtCleanup(t *testing.T) {
	t.Parallel()
	srv := pgtest.Server(t)
	var dbURL string
	t.Run("user", func(t *testing.T) {
		dbURL = pgtest.NewDatabase(t)
		connect(t, dbURL) // left open: the drop terminates it
	})
	var exists bool
	require.NoError(t, connect(t, srv.URL("postgres")).QueryRow(t.Context(),
		"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", databaseOf(t, dbURL)).Scan(&exists))
	require.False(t, exists)
}

func TestServer(t *testing.T) {
	t.Parallel()
	srv := pgtest.Server(t)
	require.Same(t, srv, pgtest.Server(t), "one server per test binary")
	require.NotZero(t, srv.Port())
	u, err := url.Parse(pgtest.NewDatabase(t))
	require.NoError(t, err)
	require.Equal(t, strconv.Itoa(srv.Port()), u.Port())
}

// TestExternalServer points AGENTSERVER_TEST_DATABASE_URL at the test
// binary's own server, spelled differently, as CI points it at a shared one.
func TestExternalServer(t *testing.T) {
	srv := pgtest.Server(t)
	external := fmt.Sprintf("postgresql://postgres@localhost:%d/postgres?sslmode=disable&application_name=ci", srv.Port())
	t.Setenv(pgtest.EnvDatabaseURL, external)

	dbURL := pgtest.NewDatabase(t)
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	require.Equal(t, "localhost", u.Hostname())
	require.Equal(t, "ci", u.Query().Get("application_name"))
	var name string
	require.NoError(t, connect(t, dbURL).QueryRow(t.Context(), "SELECT current_database()").Scan(&name))
	require.Equal(t, databaseOf(t, dbURL), name)

	var skipped bool
	t.Run("Server is skipped", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		pgtest.Server(t)
	})
	require.True(t, skipped)

	t.Setenv(pgtest.EnvDatabaseURL, "host=localhost dbname=postgres")
	ok := t.Run("keyword/value strings are refused", func(t *testing.T) {
		ft := &fatalRecorder{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			pgtest.NewDatabase(ft)
		}()
		<-done
		require.Contains(t, ft.msg, "postgres:// URL")
	})
	require.True(t, ok)
}

// fatalRecorder records a Fatalf instead of failing the test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
