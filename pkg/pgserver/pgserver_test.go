package pgserver_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgserver"
)

// dataDir returns a path for a data directory under a fresh t.TempDir. When
// the tests run as root, postgres runs as the postgres OS user, which must be
// able to traverse t.TempDir's directories (created 0700).
func dataDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		require.NoError(t, os.Chmod(d, 0o711))
	}
	return filepath.Join(dir, "data")
}

func start(t *testing.T, opts pgserver.Options) *pgserver.Server {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	s, err := pgserver.Start(t.Context(), opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, s.Stop(ctx))
	})
	return s
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func queryString(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	require.NoError(t, conn.QueryRow(t.Context(), sql).Scan(&s))
	return s
}

func TestFindBinDir(t *testing.T) {
	dir, err := pgserver.FindBinDir()
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(dir, "initdb"))
	require.FileExists(t, filepath.Join(dir, "postgres"))

	t.Run("PG_BINDIR wins", func(t *testing.T) {
		t.Setenv("PG_BINDIR", dir)
		got, err := pgserver.FindBinDir()
		require.NoError(t, err)
		require.Equal(t, dir, got)
	})
	t.Run("PG_BINDIR without binaries", func(t *testing.T) {
		t.Setenv("PG_BINDIR", t.TempDir())
		_, err := pgserver.FindBinDir()
		require.ErrorContains(t, err, "PG_BINDIR")
	})
}

func TestStartStop(t *testing.T) {
	t.Parallel()
	s := start(t, pgserver.Options{DataDir: dataDir(t), Database: "app", Ephemeral: true})

	require.NotZero(t, s.Port())
	require.Equal(t, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/app?sslmode=disable", s.Port()), s.URL("app"))
	conn := connect(t, s.URL("app"))
	require.Equal(t, "app", queryString(t, conn, "SELECT current_database()"))
	require.Equal(t, "127.0.0.1", queryString(t, conn, "SHOW listen_addresses"))
	require.Equal(t, "off", queryString(t, conn, "SHOW fsync"))
	require.Equal(t, "200", queryString(t, conn, "SHOW max_connections"))
	require.Equal(t, "UTF8", queryString(t, conn, "SHOW server_encoding"))
	require.Equal(t, s.DataDir(), s.SocketDir())
	require.FileExists(t, filepath.Join(s.SocketDir(), ".s.PGSQL."+strconv.Itoa(s.Port())))
	require.FileExists(t, filepath.Join(s.DataDir(), "log", "postgres.log"))
	if os.Geteuid() == 0 {
		fi, err := os.Stat(fmt.Sprintf("/proc/%d", s.PID()))
		require.NoError(t, err)
		require.NotZero(t, fi.Sys().(*syscall.Stat_t).Uid, "postgres must not run as root")
	}

	require.NoError(t, s.CreateDatabase(t.Context(), "app"), "creating an existing database is a no-op")
	require.NoError(t, s.CreateDatabase(t.Context(), "other"))
	require.Equal(t, "other", queryString(t, connect(t, s.URL("other")), "SELECT current_database()"))
	require.NoError(t, s.DropDatabase(t.Context(), "other"))
	_, err := pgx.Connect(t.Context(), s.URL("other"))
	require.ErrorContains(t, err, "does not exist")

	require.NoError(t, s.Stop(t.Context()))
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	require.NoError(t, s.Err())
	require.NoError(t, s.Stop(t.Context()), "Stop is idempotent")
	_, err = pgx.Connect(t.Context(), s.URL("app"))
	require.Error(t, err)
}

func TestSettings(t *testing.T) {
	t.Parallel()
	_, err := pgserver.Start(t.Context(), pgserver.Options{DataDir: dataDir(t), Settings: map[string]string{"port": "1"}})
	require.ErrorContains(t, err, "setting port")

	s := start(t, pgserver.Options{DataDir: dataDir(t), Ephemeral: true, Settings: map[string]string{"work_mem": "7MB"}})
	require.Equal(t, "7MB", queryString(t, connect(t, s.URL("postgres")), "SHOW work_mem"))
}

// TestReuseDataDir is dev mode across restarts: data written in one run is
// there in the next.
func TestReuseDataDir(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	s1 := start(t, pgserver.Options{DataDir: dir, Database: "app"})
	conn := connect(t, s1.URL("app"))
	_, err := conn.Exec(t.Context(), "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('first run')")
	require.NoError(t, err)
	require.NoError(t, conn.Close(t.Context()))
	require.NoError(t, s1.Stop(t.Context()))

	s2 := start(t, pgserver.Options{DataDir: dir, Database: "app"})
	require.Equal(t, "first run", queryString(t, connect(t, s2.URL("app")), "SELECT v FROM kept"))
	require.FileExists(t, filepath.Join(dir, "log", "postgres.log.1"), "the previous run's log is kept")
}

// TestStartAfterKill starts on the data directory of a postgres killed with
// SIGKILL: a stale postmaster.pid, children of the dead postmaster possibly
// still exiting, and crash recovery.
func TestStartAfterKill(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	s1 := start(t, pgserver.Options{DataDir: dir, Database: "app"})
	conn := connect(t, s1.URL("app"))
	_, err := conn.Exec(t.Context(), "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before the kill')")
	require.NoError(t, err)

	require.NoError(t, syscall.Kill(s1.PID(), syscall.SIGKILL))
	<-s1.Done()
	require.Error(t, s1.Err())
	require.FileExists(t, filepath.Join(dir, "postmaster.pid"), "a killed postmaster leaves its pid file")
	require.NoError(t, s1.Stop(t.Context()), "Stop after the process died releases the rest")

	s2 := start(t, pgserver.Options{DataDir: dir, Database: "app"})
	require.Equal(t, "before the kill", queryString(t, connect(t, s2.URL("app")), "SELECT v FROM kept"))
}

// TestStalePidFileReusedPID covers a postmaster.pid whose PID now belongs to
// an unrelated live process, which postgres alone would refuse.
func TestStalePidFileReusedPID(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	s1 := start(t, pgserver.Options{DataDir: dir, Ephemeral: true})
	pidFile := filepath.Join(dir, "postmaster.pid")
	content, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	require.NoError(t, s1.Stop(t.Context()))

	// This test process is alive, and its working directory is not dir.
	_, rest, _ := strings.Cut(string(content), "\n")
	require.NoError(t, os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"+rest), 0o600))
	s2 := start(t, pgserver.Options{DataDir: dir, Ephemeral: true})
	require.Equal(t, "postgres", queryString(t, connect(t, s2.URL("postgres")), "SELECT current_database()"))
}

func TestDataDirInUse(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	s1 := start(t, pgserver.Options{DataDir: dir, Ephemeral: true})
	_, err := pgserver.Start(t.Context(), pgserver.Options{DataDir: dir, Ephemeral: true})
	require.ErrorIs(t, err, pgserver.ErrDataDirInUse)
	require.Equal(t, "postgres", queryString(t, connect(t, s1.URL("postgres")), "SELECT current_database()"))
}

func TestTwoServersAtOnce(t *testing.T) {
	t.Parallel()
	s1 := start(t, pgserver.Options{DataDir: dataDir(t), Ephemeral: true})
	s2 := start(t, pgserver.Options{DataDir: dataDir(t), Ephemeral: true})
	require.NotEqual(t, s1.Port(), s2.Port())
	c1, c2 := connect(t, s1.URL("postgres")), connect(t, s2.URL("postgres"))
	_, err := c1.Exec(t.Context(), "CREATE TABLE only_in_one (v int)")
	require.NoError(t, err)
	require.Equal(t, "only_in_one", queryString(t, c1, "SELECT to_regclass('only_in_one')::text"))
	var missing *string
	require.NoError(t, c2.QueryRow(t.Context(), "SELECT to_regclass('only_in_one')::text").Scan(&missing))
	require.Nil(t, missing)
	require.Equal(t, s1.DataDir(), queryString(t, c1, "SHOW data_directory"))
	require.Equal(t, s2.DataDir(), queryString(t, c2, "SHOW data_directory"))
}

// TestLongDataDirPath uses a data directory whose path is too long for a
// Unix-domain socket inside it.
func TestLongDataDirPath(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(dataDir(t), strings.Repeat("d", 60), strings.Repeat("e", 60))
	s := start(t, pgserver.Options{DataDir: dir, Ephemeral: true})
	require.NotEqual(t, s.DataDir(), s.SocketDir())
	require.FileExists(t, filepath.Join(s.SocketDir(), ".s.PGSQL."+strconv.Itoa(s.Port())))
	require.Equal(t, "postgres", queryString(t, connect(t, s.URL("postgres")), "SELECT current_database()"))
	require.NoError(t, s.Stop(t.Context()))
	require.NoDirExists(t, s.SocketDir())
}

// TestPortTakenIsRetried makes the port picker return a port that is taken:
// Start must pick another. Not parallel: it replaces a package variable.
func TestPortTakenIsRetried(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	picks := 0
	restore := pgserver.SetPickPort(func() (int, error) {
		picks++
		if picks == 1 {
			return takenPort, nil
		}
		return pgserver.FreePort()
	})
	defer restore()

	s := start(t, pgserver.Options{DataDir: dataDir(t), Ephemeral: true})
	require.NotEqual(t, takenPort, s.Port())
	require.Equal(t, 2, picks)
	require.Equal(t, "postgres", queryString(t, connect(t, s.URL("postgres")), "SELECT current_database()"))
}

func TestExplicitPortTaken(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	_, err = pgserver.Start(t.Context(), pgserver.Options{
		DataDir: dataDir(t), Ephemeral: true, Port: taken.Addr().(*net.TCPAddr).Port,
	})
	require.ErrorContains(t, err, "Address already in use")
}

func TestNotTraversable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root switches to another OS user")
	}
	t.Parallel()
	_, err := pgserver.Start(t.Context(), pgserver.Options{DataDir: filepath.Join(t.TempDir(), "data")})
	require.ErrorContains(t, err, "not searchable")
}
