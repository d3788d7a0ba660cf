package pgtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/agentserver/agentserver/pkg/childproc"
	"github.com/agentserver/agentserver/pkg/pgserver"
	"github.com/agentserver/agentserver/pkg/proctest"
)

// PgBouncer starts a PgBouncer (Debian's package, installed by `make deps`) in front of
// the database of dbURL, a URL NewDatabase returned, and returns the same URL through it.
// poolMode is PgBouncer's pool_mode ("transaction", "session"); poolSize its
// default_pool_size, the server connections it shares among its clients. PgBouncer trusts
// every client (auth_type trust) and refuses to run as root: as root it runs as the OS
// user postgres, as the tests' PostgreSQL does (pgserver.ChildProcess). It is stopped
// when the test ends.
//
// The test is skipped where pgbouncer is not installed (`make deps` installs it as root,
// and says when it cannot), and with AGENTSERVER_TEST_DATABASE_URL set: that server's
// authentication is not known here.
func PgBouncer(t testing.TB, dbURL, poolMode string, poolSize int) string {
	t.Helper()
	if os.Getenv(EnvDatabaseURL) != "" {
		t.Skipf("pgtest: %s is set: PgBouncer would need that server's authentication", EnvDatabaseURL)
	}
	bin, err := pgbouncerBinary()
	if err != nil {
		t.Skipf("pgtest: %v", err)
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatalf("pgtest: parsing %s: %v", redact(dbURL), err)
	}
	attr, handOver, err := pgserver.ChildProcess("")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	dir, err := os.MkdirTemp("", "agentserver-pgbouncer-*")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	db := u.Path[1:]
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	write("users.txt", fmt.Sprintf("%q \"\"\n", u.User.Username()))
	if err := handOver(dir); err != nil { // PgBouncer writes its log there
		t.Fatalf("pgtest: %v", err)
	}
	// A free port can be taken between its look-up and PgBouncer's bind: then PgBouncer
	// exits saying so, and starts again on another (as pgserver does for PostgreSQL).
	for attempt := 1; ; attempt++ {
		port := proctest.FreePort(t)
		write("pgbouncer.ini", fmt.Sprintf(`[databases]
%s = host=%s port=%s dbname=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = %s
default_pool_size = %d
max_client_conn = 500
logfile = %s
`, db, u.Hostname(), u.Port(), db, port, filepath.Join(dir, "users.txt"), poolMode, poolSize, filepath.Join(dir, "pgbouncer.log")))
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		log, err := startPgBouncer(t, bin, attr, dir, addr)
		if err == nil {
			u.Host = addr
			return u.String()
		}
		if attempt < 5 && bytes.Contains(log, []byte("in use")) {
			continue
		}
		t.Fatalf("pgtest: %v; its log:\n%s", err, log)
	}
}

// startPgBouncer starts PgBouncer with dir's pgbouncer.ini and waits until its log says
// it listens on addr (a connection to addr could reach whatever took the port); it is
// stopped when the test ends. When it does not listen, the error says why and log is its
// log.
func startPgBouncer(t testing.TB, bin string, attr *syscall.SysProcAttr, dir, addr string) (log []byte, err error) {
	logFile := filepath.Join(dir, "pgbouncer.log")
	_ = os.Remove(logFile) // a previous attempt's
	cmd := exec.Command(bin, "-q", filepath.Join(dir, "pgbouncer.ini"))
	cmd.SysProcAttr = attr
	// From a thread of its own (childproc): its parent-death signal must not come with
	// the end of a thread that a stopped PostgreSQL's start locked.
	exited, err := childproc.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("starting PgBouncer: %w", err)
	}
	gone := false // its exit read already
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if !gone {
			<-exited
		}
	})
	listening := []byte("listening on " + addr + "\n")
	deadline := time.After(10 * time.Second)
	for {
		log, _ = os.ReadFile(logFile)
		if bytes.Contains(log, listening) {
			return log, nil
		}
		select {
		case err := <-exited:
			gone = true
			log, _ = os.ReadFile(logFile)
			return log, fmt.Errorf("PgBouncer exited (%v)", err)
		case <-deadline:
			return log, fmt.Errorf("PgBouncer did not listen on %s within 10 s", addr)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// pgbouncerBinary finds pgbouncer on PATH or where Debian's package puts it.
func pgbouncerBinary() (string, error) {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	const debian = "/usr/sbin/pgbouncer"
	if _, err := os.Stat(debian); err == nil {
		return debian, nil
	}
	return "", errors.New("pgbouncer is not installed, so this test is skipped: `make deps` run as root installs Debian's pgbouncer package")
}
