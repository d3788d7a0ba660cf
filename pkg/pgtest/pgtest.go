// Package pgtest gives the tests of other packages real PostgreSQL databases:
// one private, ephemeral server per test binary (started with pgserver in a
// temporary directory) and a fresh, empty database per NewDatabase call.
//
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		t.Parallel()
//		pool, err := pgxpool.New(t.Context(), pgtest.NewDatabase(t))
//		...
//	}
//
// When AGENTSERVER_TEST_DATABASE_URL is set (a postgres:// URL of a
// superuser, or of a role allowed to create databases), databases are
// created on that server instead and no server is started.
//
// It owns the test binary's server, its temporary directory, and the
// databases it creates. It must never be imported by non-test code, and never
// drops or alters a database it did not create.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentserver/agentserver/pkg/pgserver"
)

// EnvDatabaseURL names the environment variable that points the tests at an
// existing server instead of a private one.
const EnvDatabaseURL = "AGENTSERVER_TEST_DATABASE_URL"

const (
	dirPattern = "agentserver-pgtest-*"
	ownerFile  = "owner.pid" // the pid of the test binary that made the directory
)

// shared is the test binary's server, started by the first test that needs it.
var shared struct {
	mu  sync.Mutex
	srv *pgserver.Server
	dir string
	err error // why the server could not start (or that it was stopped); given to every later test
}

// Main runs the tests of a package: call it from TestMain. The package's
// server is started by the first test that needs one (a binary whose
// selected tests need none starts nothing); after the tests Main stops it,
// removes its directory and exits with the tests' code (1 if stopping fails).
//
// Main is preferred: without it the server is still started on demand, but it
// is only stopped when the test binary exits (on Linux the kernel sends it the
// signal for a fast shutdown) and its directory is removed by the next test
// binary that starts a server.
func Main(m *testing.M) {
	code := m.Run()
	if err := shutdown(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// NewDatabase creates an empty database with a unique name and returns its
// connection URL (as the superuser). The database is dropped when the test
// ends, after cleanups registered later (closing pools) have run; connections
// still open then are terminated.
func NewDatabase(t testing.TB) string {
	t.Helper()
	admin, err := adminURL()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	name := databaseName(t.Name())
	dbURL, err := withDatabase(admin, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if err := adminExec(t.Context(), admin, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		// t.Context is already cancelled when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := adminExec(ctx, admin, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: dropping database %s: %v", name, err)
		}
	})
	return dbURL
}

// Server returns the test binary's server, starting it if needed, for tests
// that need more than a database (its port, stopping it...). A test that
// stops it breaks every later test of the binary: such a test should start
// its own with pgserver. With AGENTSERVER_TEST_DATABASE_URL set there is no
// such server and the test is skipped.
func Server(t testing.TB) *pgserver.Server {
	t.Helper()
	if os.Getenv(EnvDatabaseURL) != "" {
		t.Skipf("pgtest: %s is set: the tests use that server, which pgtest does not control", EnvDatabaseURL)
	}
	srv, err := server()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return srv
}

// adminURL is the URL that databases are created through.
func adminURL() (string, error) {
	if u := os.Getenv(EnvDatabaseURL); u != "" {
		return u, nil
	}
	srv, err := server()
	if err != nil {
		return "", err
	}
	return srv.URL("postgres"), nil
}

func server() (*pgserver.Server, error) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv == nil && shared.err == nil {
		shared.srv, shared.dir, shared.err = start()
	}
	return shared.srv, shared.err
}

func start() (*pgserver.Server, string, error) {
	removeStaleDirs()
	dir, err := os.MkdirTemp("", dirPattern)
	if err != nil {
		return nil, "", fmt.Errorf("creating server directory: %w", err)
	}
	// When the tests run as root, postgres runs as the postgres OS user, which
	// must traverse this directory (MkdirTemp makes it 0700).
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, "", errors.Join(fmt.Errorf("opening up %s: %w", dir, err), os.RemoveAll(dir))
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, "", errors.Join(fmt.Errorf("writing %s: %w", ownerFile, err), os.RemoveAll(dir))
	}
	// Not a test's context: the server outlives the test that starts it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := pgserver.Start(ctx, pgserver.Options{DataDir: filepath.Join(dir, "data"), Ephemeral: true})
	if err != nil {
		return nil, "", errors.Join(err, os.RemoveAll(dir))
	}
	return srv, dir, nil
}

func shutdown() error {
	shared.mu.Lock()
	srv, dir := shared.srv, shared.dir
	shared.srv, shared.err = nil, errors.New("the test server was stopped by pgtest.Main")
	shared.mu.Unlock()
	if srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return errors.Join(srv.Stop(ctx), os.RemoveAll(dir))
}

// removeStaleDirs removes the directories of test binaries that died without
// cleaning up (or ran without Main): those whose owner and postmaster are
// both gone. A directory without an owner file is being made: left alone.
func removeStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPattern))
	for _, dir := range dirs {
		owner, ok := pidFromFile(filepath.Join(dir, ownerFile))
		if !ok || owner == os.Getpid() || alive(owner) {
			continue
		}
		if pm, ok := pidFromFile(filepath.Join(dir, "data", "postmaster.pid")); ok && alive(pm) {
			continue // still shutting down
		}
		_ = os.RemoveAll(dir)
	}
}

func pidFromFile(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	return pid, err == nil && pid > 0
}

func alive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	defer p.Release()
	err = p.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, syscall.EPERM)
}

// databaseName makes a unique database name that says which test made it:
// unique across test binaries sharing one server, and within Postgres's 63
// bytes.
func databaseName(testName string) string {
	var b strings.Builder
	b.WriteString("t_")
	underscore := true
	for _, r := range strings.ToLower(testName) {
		if b.Len() >= 34 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			underscore = false
		} else if !underscore {
			b.WriteByte('_')
			underscore = true
		}
	}
	if !underscore {
		b.WriteByte('_')
	}
	suffix := make([]byte, 6)
	_, _ = rand.Read(suffix)
	b.WriteString(hex.EncodeToString(suffix))
	return b.String()
}

// withDatabase returns admin with its database replaced by name.
func withDatabase(admin, name string) (string, error) {
	u, err := url.Parse(admin)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("%s must be a postgres:// URL (keyword=value strings are not supported)", EnvDatabaseURL)
	}
	u.Path, u.RawPath = "/"+name, ""
	return u.String(), nil
}

func adminExec(ctx context.Context, admin, sql string) error {
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", redact(admin), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// redact hides a password in a URL for error messages.
func redact(connString string) string {
	if u, err := url.Parse(connString); err == nil {
		return u.Redacted()
	}
	return "the server"
}
