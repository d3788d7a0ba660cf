// Package pgserver runs a private PostgreSQL server from the local
// installation: the database of `agentserver dev` when DATABASE_URL is unset,
// and of every test package that needs one (through pgtest).
//
// It owns the data directory it is given (initdb on first use, ownership, its
// log file) and the postgres process it starts (port, socket, settings,
// lifetime). The server trusts every connection from this machine and, when
// Ephemeral, gives up durability: it must never serve a production database,
// never listen on anything but 127.0.0.1, never run postgres as root (as root
// it steps down to the postgres OS user), and never outlive the process that
// started it (on Linux the kernel stops it when its parent dies).
package pgserver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/agentserver/agentserver/pkg/childproc"
)

// Superuser is the name of the cluster's superuser, created by initdb.
const Superuser = "postgres"

// DefaultStartTimeout bounds how long Start waits for a server to accept
// connections when Options.StartTimeout is zero. Crash recovery after an
// unclean stop counts against it.
const DefaultStartTimeout = time.Minute

// ErrDataDirInUse is returned (wrapped) by Start when a live postgres already
// runs on the data directory.
var ErrDataDirInUse = errors.New("data directory is in use by a running postgres")

// Unix-domain socket paths are limited to 108 bytes (sun_path) on Linux,
// including the NUL and the "/.s.PGSQL.65535" that postgres appends.
const maxSocketDirLen = 107 - len("/.s.PGSQL.65535")

// Settings owned by Start: Options.Settings may not override them.
var reservedSettings = []string{"port", "listen_addresses", "unix_socket_directories"}

// Options configures Start.
type Options struct {
	// DataDir is the cluster's data directory (required). Start runs initdb
	// there when it holds no cluster yet and reuses the cluster otherwise.
	// When this process is root, every directory above it must be searchable
	// by RunAs: a directory from os.MkdirTemp or t.TempDir is created with
	// mode 0700 and must be opened up (chmod 0711) first; /tmp itself is fine.
	DataDir string
	// Port is the TCP port on 127.0.0.1. Zero picks a free port, and picks
	// another one if something else takes it before postgres binds it.
	Port int
	// Database, when set, is created after start unless it exists already.
	Database string
	// Settings are extra postgresql.conf settings, passed on the command line:
	// they override this package's defaults and postgresql.conf. port,
	// listen_addresses and unix_socket_directories are owned by Start.
	Settings map[string]string
	// Ephemeral trades durability for speed (fsync, synchronous_commit and
	// full_page_writes off): for clusters that are thrown away, such as tests'.
	// A crash of the machine, not of postgres, can then corrupt the cluster.
	Ephemeral bool
	// BinDir holds initdb and postgres. Empty means FindBinDir, or for a
	// reused cluster the Debian installation of the cluster's major version
	// when the one FindBinDir finds differs.
	BinDir string
	// RunAs is the OS user that initdb and postgres run as when this process
	// is root, as PostgreSQL refuses to run as root. Empty means "postgres".
	// Ignored when not root: the server then runs as the current user.
	RunAs string
	// StartTimeout bounds the wait for the server to accept connections.
	// Zero means DefaultStartTimeout.
	StartTimeout time.Duration
	// Logger receives postgres's log lines (routine ones at debug level). Nil
	// discards them. Either way they are written to DataDir/log/postgres.log
	// (the previous run's log is kept as postgres.log.1).
	Logger *slog.Logger
}

// Server is a running postgres started by Start. Its methods are safe for
// concurrent use.
type Server struct {
	dataDir   string
	binDir    string
	socketDir string
	tmpSocket bool // socketDir was created by Start and is removed by Stop
	port      int
	logger    *slog.Logger
	logw      *logWriter

	cmd     *exec.Cmd
	done    chan struct{} // closed when the postmaster has exited
	waitErr error         // written before done is closed

	finishOnce sync.Once
}

// Start initialises opts.DataDir if needed, starts postgres on it, waits until
// it accepts connections and creates opts.Database. The server keeps running
// after ctx ends: ctx bounds the start only. Call Stop to shut it down.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.DataDir == "" {
		return nil, errors.New("starting postgres: Options.DataDir is required")
	}
	for _, name := range reservedSettings {
		if _, ok := opts.Settings[name]; ok {
			return nil, fmt.Errorf("starting postgres: setting %s is chosen by pgserver and cannot be overridden", name)
		}
	}
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("starting postgres: port %d out of range", opts.Port)
	}
	if opts.RunAs == "" {
		opts.RunAs = "postgres"
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = DefaultStartTimeout
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()

	id, err := lookupIdentity(opts.RunAs)
	if err != nil {
		return nil, fmt.Errorf("starting postgres: %w", err)
	}
	dataDir, err := prepareDataDir(opts.DataDir, id)
	if err != nil {
		return nil, fmt.Errorf("starting postgres: %w", err)
	}
	binDir, err := chooseBinDir(opts.BinDir, dataDir)
	if err != nil {
		return nil, fmt.Errorf("starting postgres on %s: %w", dataDir, err)
	}
	if !initialised(dataDir) {
		if err := initdb(ctx, binDir, dataDir, opts.Ephemeral, id, logger); err != nil {
			return nil, fmt.Errorf("initialising %s: %w", dataDir, err)
		}
	}
	if err := checkLockFile(dataDir, logger); err != nil {
		return nil, fmt.Errorf("starting postgres on %s: %w", dataDir, err)
	}

	s := &Server{dataDir: dataDir, binDir: binDir, socketDir: dataDir, logger: logger}
	if len(dataDir) > maxSocketDirLen {
		if s.socketDir, err = shortSocketDir(id); err != nil {
			return nil, fmt.Errorf("starting postgres on %s: %w", dataDir, err)
		}
		s.tmpSocket = true
	}
	if s.logw, err = openLog(dataDir, id, logger); err != nil {
		s.finish()
		return nil, fmt.Errorf("starting postgres on %s: %w", dataDir, err)
	}

	if err := s.launchWithRetry(ctx, opts, id); err != nil {
		s.finish()
		return nil, fmt.Errorf("starting postgres on %s: %w", dataDir, err)
	}
	logger.Info("postgres started", "data_dir", dataDir, "port", s.port, "pid", s.PID())

	if opts.Database != "" {
		if err := s.CreateDatabase(ctx, opts.Database); err != nil {
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			return nil, errors.Join(err, s.Stop(stopCtx))
		}
	}
	return s, nil
}

// ChildProcess returns, for a helper that refuses to run as root as postgres does (a
// test's PgBouncer), the attributes postgres starts with — the OS user runAs ("postgres"
// when empty) when this process is root, its own process group, on Linux a parent-death
// signal — and a function that hands a file or directory to that user (a no-op when not
// root).
func ChildProcess(runAs string) (*syscall.SysProcAttr, func(path string) error, error) {
	if runAs == "" {
		runAs = "postgres"
	}
	id, err := lookupIdentity(runAs)
	if err != nil {
		return nil, nil, err
	}
	return procAttr(id), func(path string) error { return chownTo(path, id) }, nil
}

// Port returns the TCP port the server listens on, on 127.0.0.1.
func (s *Server) Port() int { return s.port }

// PID returns the process id of the postmaster.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// DataDir returns the absolute path of the cluster's data directory.
func (s *Server) DataDir() string { return s.dataDir }

// SocketDir returns the directory of the server's Unix-domain socket, for
// tools such as `psql -h DIR -U postgres`.
func (s *Server) SocketDir() string { return s.socketDir }

// URL returns the connection URL of database db as the superuser, over TCP.
func (s *Server) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(Superuser),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Done returns a channel that is closed when the postgres process has exited,
// whether through Stop or not; Err then says how it exited.
func (s *Server) Done() <-chan struct{} { return s.done }

// Err returns nil while the server runs, and after Done is closed the
// process's exit error (nil for a clean exit).
func (s *Server) Err() error {
	select {
	case <-s.done:
		return s.waitErr
	default:
		return nil
	}
}

// CreateDatabase creates database name unless it exists already.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	if err := validDatabaseName(name); err != nil {
		return err
	}
	return s.admin(ctx, func(conn *pgx.Conn) error {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
			return fmt.Errorf("looking up database %s: %w", name, err)
		}
		if exists {
			return nil
		}
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
			// A concurrent CREATE of the same name loses with duplicate_database,
			// or with unique_violation on pg_database's name index.
			if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && (pgErr.Code == "42P04" || pgErr.Code == "23505") {
				return nil
			}
			return fmt.Errorf("creating database %s: %w", name, err)
		}
		return nil
	})
}

// DropDatabase drops database name if it exists, terminating its connections.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	if err := validDatabaseName(name); err != nil {
		return err
	}
	return s.admin(ctx, func(conn *pgx.Conn) error {
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("dropping database %s: %w", name, err)
		}
		return nil
	})
}

// Stop shuts the server down with a fast shutdown (clients are disconnected,
// the cluster is left clean) and waits for the process to exit. If ctx ends
// first, it escalates to an immediate shutdown, then a kill, and returns
// ctx's error; the cluster then recovers on its next start. Stop may be
// called more than once; it returns nil when the server has already exited.
func (s *Server) Stop(ctx context.Context) error {
	select {
	case <-s.done:
		s.finish()
		return nil
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stopping postgres (pid %d): %w", s.PID(), err)
	}
	select {
	case <-s.done:
		s.finish()
		if s.waitErr != nil {
			return fmt.Errorf("postgres (pid %d) exited uncleanly: %w\n%s", s.PID(), s.waitErr, s.logw.tail())
		}
		s.logger.Info("postgres stopped", "data_dir", s.dataDir, "pid", s.PID())
		return nil
	case <-ctx.Done():
	}
	s.kill()
	s.finish()
	return fmt.Errorf("stopping postgres (pid %d): fast shutdown did not finish, used immediate shutdown: %w", s.PID(), ctx.Err())
}

// kill stops the postmaster as fast as possible: an immediate shutdown, in
// which postgres still stops its children itself, then SIGKILL. Its children
// exit on their own once they see the postmaster gone.
func (s *Server) kill() {
	_ = s.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// finish releases what Start acquired besides the process.
func (s *Server) finish() {
	s.finishOnce.Do(func() {
		if s.logw != nil {
			s.logw.close()
		}
		if s.tmpSocket {
			_ = os.RemoveAll(s.socketDir)
		}
	})
}

func (s *Server) admin(ctx context.Context, f func(*pgx.Conn) error) error {
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return fmt.Errorf("connecting to postgres on port %d: %w", s.port, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return f(conn)
}

func validDatabaseName(name string) error {
	// Postgres silently truncates identifiers to 63 bytes: URL(name) would
	// then name a database that does not exist.
	if name == "" || len(name) > 63 {
		return fmt.Errorf("invalid database name %q: must be 1 to 63 bytes", name)
	}
	return nil
}

// prepareDataDir creates the data directory (owned by id when root) and
// returns its absolute, symlink-free path.
func prepareDataDir(dir string, id *osIdentity) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("resolving data directory %s: %w", dir, err)
	}
	// Parents are created searchable: postgres, not this process, reads below them.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("creating parent of data directory %s: %w", dir, err)
	}
	switch err := os.Mkdir(dir, 0o700); {
	case err == nil:
		if err := chownTo(dir, id); err != nil {
			return "", err
		}
	case errors.Is(err, fs.ErrExist):
		// A directory created empty by someone else (t.TempDir) is taken
		// over; an initialised one is left as initdb made it.
		if !initialised(dir) {
			if err := chownTo(dir, id); err != nil {
				return "", err
			}
			if err := os.Chmod(dir, 0o700); err != nil {
				return "", fmt.Errorf("restricting data directory %s: %w", dir, err)
			}
		}
	default:
		return "", fmt.Errorf("creating data directory %s: %w", dir, err)
	}
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		return "", fmt.Errorf("resolving data directory: %w", err)
	}
	if err := checkTraversable(dir, id); err != nil {
		return "", err
	}
	return dir, nil
}

func initialised(dataDir string) bool {
	_, err := os.Stat(filepath.Join(dataDir, "PG_VERSION"))
	return err == nil
}

// chooseBinDir picks the binaries, and makes sure that a reused cluster was
// made by the same major version.
func chooseBinDir(binDir, dataDir string) (string, error) {
	explicit := binDir != "" || os.Getenv("PG_BINDIR") != ""
	if binDir == "" {
		var err error
		if binDir, err = FindBinDir(); err != nil {
			return "", err
		}
	} else if !hasServerBinaries(binDir) {
		return "", fmt.Errorf("Options.BinDir %s holds no initdb and postgres executables", binDir)
	}
	if !initialised(dataDir) {
		return binDir, nil
	}
	b, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION"))
	if err != nil {
		return "", fmt.Errorf("reading cluster version: %w", err)
	}
	clusterVersion := strings.TrimSpace(string(b))
	serverVersion, err := serverMajorVersion(binDir)
	if err != nil {
		return "", err
	}
	if clusterVersion == serverVersion {
		return binDir, nil
	}
	if !explicit {
		if dir := debianBinDir(clusterVersion); dir != "" {
			return dir, nil
		}
	}
	return "", fmt.Errorf("the cluster was made by PostgreSQL %s but %s holds PostgreSQL %s: "+
		"install PostgreSQL %s and point PG_BINDIR at it, or remove the data directory to start afresh (its data is lost)",
		clusterVersion, binDir, serverVersion, clusterVersion)
}

// filteredEnv is the environment of initdb and postgres: PG* variables (PGDATA,
// PGPORT, ...) would change what they do, and the C locale keeps messages in
// English, which launch reads to tell a taken port from other failures.
func filteredEnv() []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=")
	})
	return append(env, "LC_ALL=C")
}

// runChild starts cmd from an OS thread that stays locked until the child has
// exited (childproc: the parent-death signal fires when the thread that forked the
// child exits), then sets *waitErr and closes done.
func runChild(cmd *exec.Cmd, waitErr *error, done chan<- struct{}) error {
	exited, err := childproc.Start(cmd)
	if err != nil {
		return err
	}
	go func() {
		*waitErr = <-exited
		close(done)
	}()
	return nil
}

func initdb(ctx context.Context, binDir, dataDir string, ephemeral bool, id *osIdentity, logger *slog.Logger) error {
	args := []string{
		"--pgdata=" + dataDir,
		"--username=" + Superuser,
		"--auth=trust", // loopback TCP and the socket in the data directory only
		"--encoding=UTF8",
		"--locale=C", // byte-order collation: fast, and identical on every machine
	}
	if ephemeral {
		args = append(args, "--no-sync")
	}
	logger.Info("initialising postgres cluster", "data_dir", dataDir, "bin_dir", binDir)
	cmd := exec.Command(filepath.Join(binDir, "initdb"), args...)
	cmd.Dir = dataDir
	cmd.Env = filteredEnv()
	cmd.SysProcAttr = procAttr(id)
	out := newLogWriter(nil, logger)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	var waitErr error
	done := make(chan struct{})
	if err := runChild(cmd, &waitErr, done); err != nil {
		return fmt.Errorf("running initdb: %w", err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		// SIGINT makes initdb remove what it created.
		_ = cmd.Process.Signal(syscall.SIGINT)
		<-done
		return fmt.Errorf("initdb interrupted: %w", ctx.Err())
	}
	if waitErr != nil {
		return fmt.Errorf("initdb failed: %w\n%s", waitErr, out.tail())
	}
	return nil
}

// checkLockFile deals with a postmaster.pid left by a postgres that was
// killed. Postgres removes such a file itself when its PID is dead, but
// refuses to start when the PID now belongs to another process of the same
// user, which happens in containers where PIDs are small and reused quickly.
// A running postmaster has its data directory as working directory: a
// process whose working directory is elsewhere cannot be one.
func checkLockFile(dataDir string, logger *slog.Logger) error {
	pidFile := filepath.Join(dataDir, "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("reading %s: %w", pidFile, err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 || !processAlive(pid) {
		return nil
	}
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		return nil // cannot tell (not Linux, or not permitted): postgres decides
	}
	if cwd == dataDir {
		return fmt.Errorf("%w: postmaster pid %d (see %s)", ErrDataDirInUse, pid, pidFile)
	}
	logger.Warn("removing stale postmaster.pid: its pid now belongs to another process", "pid", pid, "data_dir", dataDir)
	if err := os.Remove(pidFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale %s: %w", pidFile, err)
	}
	return nil
}

// shortSocketDir makes a socket directory for a data directory whose path is
// too long for a Unix-domain socket.
func shortSocketDir(id *osIdentity) (string, error) {
	base := "/tmp"
	if fi, err := os.Stat(base); err != nil || !fi.IsDir() {
		base = os.TempDir()
	}
	dir, err := os.MkdirTemp(base, "pgsock-")
	if err != nil {
		return "", fmt.Errorf("creating socket directory: %w", err)
	}
	if err := chownTo(dir, id); err != nil {
		_ = os.Remove(dir)
		return "", err
	}
	return dir, nil
}

// startFailure is why a postmaster exited before accepting connections.
type startFailure struct {
	err  error
	tail string
}

func (f *startFailure) Error() string {
	return fmt.Sprintf("postgres exited before accepting connections: %v\n%s", f.err, f.tail)
}

func (f *startFailure) portTaken() bool {
	return strings.Contains(f.tail, "Address already in use")
}

// shmemBusy reports a killed postmaster's children still attached to its
// shared memory: they exit on their own soon after noticing their parent gone.
func (f *startFailure) shmemBusy() bool {
	return strings.Contains(f.tail, "pre-existing shared memory block")
}

func (s *Server) launchWithRetry(ctx context.Context, opts Options, id *osIdentity) error {
	backoff := 50 * time.Millisecond
	for {
		port := opts.Port
		if port == 0 {
			var err error
			if port, err = pickPort(); err != nil {
				return err
			}
		}
		err := s.launch(ctx, opts, id, port)
		if err == nil {
			return nil
		}
		failure, ok := errors.AsType[*startFailure](err)
		switch {
		case ok && failure.portTaken() && opts.Port == 0:
			s.logger.Debug("postgres port taken, picking another", "port", port)
			continue
		case ok && failure.shmemBusy():
			s.logger.Debug("processes of a killed postgres still hold its shared memory; retrying", "data_dir", s.dataDir)
		case ok && strings.Contains(failure.tail, `lock file "postmaster.pid" already exists`):
			return fmt.Errorf("%w: %w", ErrDataDirInUse, err)
		default:
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last attempt: %w)", ctx.Err(), err)
		case <-time.After(backoff):
			backoff = min(2*backoff, time.Second)
		}
	}
}

// pickPort is freePort; tests replace it.
var pickPort = freePort

// freePort returns a loopback port that is free now. Another process may take
// it before postgres binds it; launchWithRetry then picks another.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// settings returns the -c settings of a postgres run, sorted by name.
func (s *Server) settings(opts Options, port int) []string {
	conf := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(port),
		"unix_socket_directories": `"` + strings.ReplaceAll(s.socketDir, `"`, `""`) + `"`,
		"max_connections":         "200",
		"lc_messages":             "C", // launch reads the log; see filteredEnv
		"log_line_prefix":         "%m [%p] ",
		"logging_collector":       "off", // the log goes through our pipe
		// agentserver's queue table churns (a row in and out per run): look for tables to
		// vacuum every few seconds rather than every minute, so dead queue entries never
		// pile up at the head of the claim index.
		"autovacuum_naptime": "5s",
	}
	if opts.Ephemeral {
		conf["fsync"] = "off"
		conf["synchronous_commit"] = "off"
		conf["full_page_writes"] = "off"
	}
	maps.Copy(conf, opts.Settings)
	args := make([]string, 0, 2*len(conf))
	for _, k := range slices.Sorted(maps.Keys(conf)) {
		args = append(args, "-c", k+"="+conf[k])
	}
	return args
}

// launch starts one postmaster on port and waits until it accepts
// connections, or stops it.
func (s *Server) launch(ctx context.Context, opts Options, id *osIdentity, port int) error {
	args := append([]string{"-D", s.dataDir}, s.settings(opts, port)...)
	cmd := exec.Command(filepath.Join(s.binDir, "postgres"), args...)
	cmd.Dir = s.dataDir
	cmd.Env = filteredEnv()
	cmd.SysProcAttr = procAttr(id)
	cmd.Stdout, cmd.Stderr = s.logw, s.logw
	// After a crash, orphaned children may hold the log pipe for a moment.
	cmd.WaitDelay = 2 * time.Second

	s.cmd, s.port, s.done, s.waitErr = cmd, port, make(chan struct{}), nil
	s.logw.resetTail()
	if err := runChild(cmd, &s.waitErr, s.done); err != nil {
		return fmt.Errorf("running postgres: %w", err)
	}
	err := s.waitReady(ctx)
	if err == nil {
		return nil
	}
	select {
	case <-s.done:
	default:
		s.kill()
	}
	return err
}

// waitReady polls until the server accepts connections, the process exits,
// or ctx ends.
func (s *Server) waitReady(ctx context.Context) error {
	delay := 10 * time.Millisecond
	var lastErr error
	for {
		if lastErr = s.ping(ctx); lastErr == nil {
			return nil
		}
		select {
		case <-s.done:
			return &startFailure{err: s.waitErr, tail: s.logw.tail()}
		case <-ctx.Done():
			return fmt.Errorf("waiting for postgres to accept connections: %w (last error: %v)\n%s", ctx.Err(), lastErr, s.logw.tail())
		case <-time.After(delay):
			delay = min(2*delay, 100*time.Millisecond)
		}
	}
}

// ping connects and checks that the server answering is this one: if the
// port was taken between freePort and postgres's bind, another server may be
// listening there while ours is failing.
func (s *Server) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// Whatever listens on the port while ours is failing may never answer.
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var dir string
	if err := conn.QueryRow(ctx, "SELECT current_setting('data_directory')").Scan(&dir); err != nil {
		return err
	}
	if dir != s.dataDir {
		return fmt.Errorf("port %d is served by another postgres (data directory %s)", s.port, dir)
	}
	return nil
}
