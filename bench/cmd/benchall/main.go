// Command benchall measures agentserver against River on the same PostgreSQL in one
// invocation, and prints ours, River's and the ratios (a text table, and a JSON file).
//
// It starts a private PostgreSQL (pkg/pgserver) in a temporary directory, runs River's three
// workloads in-process on database "river" (package baseline), builds and starts the
// all-in-one server (bin/agentserver dev, DATABASE_URL on database "agentserver" of the same
// server, many cpu slots, the C no-op executor of examples/noop/c) and drives it with
// agentctl bench through the public gRPC API. Workloads, interleaved River then ours in each
// round:
//
//   - sustained: one insert / CreateRun per job from 8 concurrent creators for a duration;
//   - burn-down: N jobs inserted first (InsertMany / BatchCreateRuns), measured until all
//     have finished;
//   - latency: 500 jobs/s offered open loop, enqueue→start p50/p99.
//
// Run it from bench/ outside the workspace (River stays out of the services' graph):
//
//	GOWORK=off go run ./cmd/benchall --quick    # about a minute
//	GOWORK=off go run ./cmd/benchall            # the full figures (several minutes per round)
package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentserver/agentserver/bench/baseline"
	"github.com/agentserver/agentserver/bench/measure"
	"github.com/agentserver/agentserver/pkg/pgserver"
)

// config is benchall's command line.
type config struct {
	quick             bool
	rounds            int
	repo              string
	out               string
	durable           bool
	concurrency       int
	wideConcurrency   int
	sessions          int
	sustainedDuration time.Duration
	sustainedMax      int
	burndown          int
	rate              float64
	rateDuration      time.Duration
	slots             string
	workers           int
	only              string
	keep              bool
	statements        bool
	executor          string
	execConcurrency   int
}

func parseFlags(args []string) (config, error) {
	c := config{}
	fs := flag.NewFlagSet("benchall", flag.ContinueOnError)
	fs.BoolVar(&c.quick, "quick", false, "small sizes, one round (about a minute): sustained 5 s (≤3,000 jobs), burn-down 5,000, 500/s for 5 s")
	fs.IntVar(&c.rounds, "rounds", 0, "rounds of every workload; figures are medians with min–max (default 3, --quick 1)")
	fs.StringVar(&c.repo, "repo", "..", "root of the agentserver repository")
	fs.StringVar(&c.out, "out", filepath.Join(os.TempDir(), "agentserver-bench.json"), "JSON file of every result")
	fs.BoolVar(&c.durable, "durable", false, "run PostgreSQL with fsync and synchronous_commit on (default: off, as the tests' PostgreSQL)")
	fs.IntVar(&c.concurrency, "concurrency", 8, "concurrent creators of the sustained workload")
	// 16: River's best of 8, 16 and 32 inserters on the 2-core machine of docs/performance-history.md
	// (its twenty-first pass); with 8 our closed loop bounds every batch to ~3 runs.
	fs.IntVar(&c.wideConcurrency, "wide-concurrency", 16, "concurrent creators of the second sustained workload, run by both systems the same way (0 skips it)")
	fs.IntVar(&c.sessions, "sessions", 500, "threads of the sessions workload, ours only (River has no threads): --concurrency creators put every run on one of this many threads in turn, multitask enqueue, like the sustained workload otherwise (0 skips it)")
	fs.DurationVar(&c.sustainedDuration, "sustained-duration", 0, "length of the sustained workload (default 20s, --quick 5s)")
	fs.IntVar(&c.sustainedMax, "sustained-max", 0, "most jobs the sustained workload creates (default 200,000, --quick 3,000)")
	fs.IntVar(&c.burndown, "burndown", 0, "jobs of the burn-down (default 100,000, --quick 5,000)")
	fs.Float64Var(&c.rate, "rate", 500, "offered rate of the latency workload, jobs/s")
	fs.DurationVar(&c.rateDuration, "rate-duration", 0, "length of the latency workload (default 20s, --quick 5s)")
	// 500 slots: up to 500 runs in flight, as River's 500 workers allow up to 500 jobs
	// (thirteenth pass of docs/performance-history.md; 256 before, 64 until the seventh, which
	// capped our claim and result batches where River's are not).
	fs.StringVar(&c.slots, "slots", "cpu=500", "WORKER_SLOTS of each worker of the all-in-one server")
	fs.IntVar(&c.workers, "workers", 1, "worker-agents in the all-in-one server (AGENTSERVER_WORKERS), each with --slots")
	fs.StringVar(&c.only, "only", "", "run only river or only ours")
	fs.BoolVar(&c.keep, "keep", false, "keep the temporary directory (PostgreSQL data, logs)")
	fs.StringVar(&c.executor, "executor", "c", "no-op executor of our runs: c (examples/noop/c/noop.c, built with cc) or go (examples/noop, whose Go runtime costs ~30 µs of CPU per run)")
	// 64: the no-op executor takes any number of requests at once (concurrency in the flow,
	// docs/executor-protocol.md), so that a burst of them is one write each way; with 500
	// slots, 8 processes. 1 measures protocol v1's one request at a time per process.
	fs.IntVar(&c.execConcurrency, "executor-concurrency", 64, "concurrency of the no-op executor in our flow: the requests one executor process takes at once (1: one at a time)")
	fs.BoolVar(&c.statements, "statements", false, "load pg_stat_statements and print, per workload, the statements each job costs (adds a little overhead to both systems)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	def := func(v *int, full, quick int) {
		if *v == 0 {
			*v = full
			if c.quick {
				*v = quick
			}
		}
	}
	defDur := func(v *time.Duration, full, quick time.Duration) {
		if *v == 0 {
			*v = full
			if c.quick {
				*v = quick
			}
		}
	}
	def(&c.rounds, 3, 1)
	def(&c.sustainedMax, 200_000, 3_000)
	def(&c.burndown, 100_000, 5_000)
	defDur(&c.sustainedDuration, 20*time.Second, 5*time.Second)
	defDur(&c.rateDuration, 20*time.Second, 5*time.Second)
	if c.only != "" && c.only != "river" && c.only != "ours" {
		return c, fmt.Errorf("--only must be river or ours, got %q", c.only)
	}
	if c.sessions < 0 {
		return c, fmt.Errorf("--sessions must be at least 0 (threads; 0 skips the workload), got %d", c.sessions)
	}
	if c.wideConcurrency < 0 || c.concurrency < 1 {
		return c, fmt.Errorf("--concurrency must be at least 1 and --wide-concurrency at least 0, got %d and %d", c.concurrency, c.wideConcurrency)
	}
	if c.execConcurrency < 1 || c.execConcurrency > 1024 {
		return c, fmt.Errorf("--executor-concurrency must be between 1 and 1024, got %d", c.execConcurrency)
	}
	if c.executor != "c" && c.executor != "go" {
		return c, fmt.Errorf("--executor must be c or go, got %q", c.executor)
	}
	return c, nil
}

// Workload names, in the order they run and print.
const (
	wSustained = "sustained"
	// wSustainedWide is the sustained workload with --wide-concurrency creators.
	wSustainedWide = "sustained_wide"
	wBurndown      = "burndown"
	wLatency       = "latency"
	// wSessions is the sustained workload on --sessions threads, ours only.
	wSessions = "sessions"
)

// workloads are the workloads the configuration runs, in order.
func (c config) workloads() []string {
	ws := []string{wSustained}
	if c.wideConcurrency > 0 {
		ws = append(ws, wSustainedWide)
	}
	ws = append(ws, wBurndown, wLatency)
	if c.sessions > 0 && c.only != "river" {
		ws = append(ws, wSessions)
	}
	return ws
}

// creators is the sustained workload w's concurrent creators.
func (c config) creators(w string) int {
	if w == wSustainedWide {
		return c.wideConcurrency
	}
	return c.concurrency
}

// results holds every round's result per system and workload.
type results map[string]map[string][]measure.Result

func (r results) add(system, workload string, res measure.Result) {
	if r[system] == nil {
		r[system] = map[string][]measure.Result{}
	}
	r[system][workload] = append(r[system][workload], res)
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "benchall:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, cfg config) (err error) {
	began := time.Now()
	repo, err := filepath.Abs(cfg.repo)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(repo, "go.work")); err != nil {
		return fmt.Errorf("--repo %s is not the agentserver repository (no go.work): %w", repo, err)
	}
	dir, err := os.MkdirTemp("", "agentserver-bench-*")
	if err != nil {
		return err
	}
	// PostgreSQL runs as the postgres user when we are root: it must reach the directory.
	if err := os.Chmod(dir, 0o711); err != nil {
		return err
	}
	if cfg.keep {
		logf("keeping %s", dir)
	} else {
		defer os.RemoveAll(dir)
	}

	var bins binaries
	if cfg.only != "river" {
		logf("building agentserver, agentctl and the %s no-op executor", executorName(cfg.executor))
		if bins, err = build(ctx, repo, filepath.Join(dir, "bin"), cfg.executor); err != nil {
			return err
		}
	}

	logf("starting PostgreSQL (durable=%v)", cfg.durable)
	opts := pgserver.Options{DataDir: filepath.Join(dir, "pg"), Ephemeral: !cfg.durable}
	if cfg.statements {
		opts.Settings = map[string]string{"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all", "pg_stat_statements.track_planning": "on"}
	}
	pg, err := pgserver.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		err = errors.Join(err, pg.Stop(stopCtx))
	}()
	for _, db := range []string{"river", "agentserver", "calibration"} {
		if err := pg.CreateDatabase(ctx, db); err != nil {
			return err
		}
	}
	machine, err := describeMachine(ctx, pg.URL("calibration"))
	if err != nil {
		return err
	}
	var stmts *statements
	if cfg.statements {
		if stmts, err = newStatements(ctx, pg.URL("calibration")); err != nil {
			return err
		}
		defer stmts.close()
	}
	logf("calibrating: single-row INSERT commits from %d connections for 3s", cfg.concurrency)
	if machine.InsertCommitsPerS, err = insertCommits(ctx, pg.URL("calibration"), cfg.concurrency, 3*time.Second); err != nil {
		return err
	}
	logf("%.0f single-row INSERT commits/s", machine.InsertCommitsPerS)

	riverPool, err := pgxpool.New(ctx, withParam(pg.URL("river"), "pool_max_conns", "40"))
	if err != nil {
		return err
	}
	defer riverPool.Close()
	if err := baseline.Migrate(ctx, riverPool); err != nil {
		return err
	}
	rc := baseline.Defaults(riverPool)
	rc.CPURoots["postgres"] = pg.PID()

	var srv *server
	if cfg.only != "river" {
		logf("starting the all-in-one server (%d worker(s), WORKER_SLOTS=%s)", cfg.workers, cfg.slots)
		if srv, err = startServer(ctx, bins, pg.URL("agentserver"), cfg.slots, cfg.workers, dir); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, srv.stop()) }()
		srv.pids = fmt.Sprintf("agentserver=%d,postgres=%d", srv.cmd.Process.Pid, pg.PID())
		flow := filepath.Join(dir, "noop-flow.yaml")
		flowYAML := fmt.Sprintf("executors:\n  - name: noop\n    command: [%q]\n", bins.noop)
		if cfg.execConcurrency > 1 {
			flowYAML += fmt.Sprintf("    concurrency: %d\n", cfg.execConcurrency)
		}
		if err := os.WriteFile(flow, []byte(flowYAML), 0o644); err != nil {
			return err
		}
		// Every workload of ours runs on bench-noop, whose executor processes the warm-up
		// starts: one per slot, or per --executor-concurrency slots (a burn-down claims every
		// slot at once), so that no workload measures executor start-up (the worker pools
		// replicas per assistant and flow, so the burn-down's hold and release keep them).
		warm := max(2000, 4*totalSlots(cfg))
		logf("warming up (starts the executor processes: %d runs, one process per %d slot(s))", warm, cfg.execConcurrency)
		if _, err := srv.bench(ctx, "--flow", flow, "--assistant-id", "bench-noop", "--concurrency", strconv.Itoa(cfg.concurrency),
			"--duration", "2s", "--max-runs", "1000"); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		if _, err := srv.bench(ctx, "--assistant", "bench-noop", "--burndown", strconv.Itoa(warm), "--hold=false"); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}

	all := results{}
	for round := 1; round <= cfg.rounds; round++ {
		for _, w := range cfg.workloads() {
			if cfg.only != "ours" && w != wSessions {
				logf("round %d/%d: River %s", round, cfg.rounds, w)
				stmts.reset(ctx)
				res, err := runRiver(ctx, rc, cfg, w)
				if err != nil {
					return fmt.Errorf("river %s: %w", w, err)
				}
				all.add("river", w, res)
				stmts.collect(ctx, "river", w, "river", res.Completed)
				logf("  %s", brief(res))
			}
			if cfg.only != "river" {
				logf("round %d/%d: agentserver %s", round, cfg.rounds, w)
				stmts.reset(ctx)
				res, err := runOurs(ctx, srv, cfg, w)
				if err != nil {
					return fmt.Errorf("agentserver %s: %w", w, err)
				}
				all.add("ours", w, res)
				stmts.collect(ctx, "ours", w, "agentserver", res.Completed)
				logf("  %s", brief(res))
			}
		}
	}
	summary := summarize(all, cfg)
	printTable(os.Stdout, machine, cfg, summary)
	goals := targets(summary, cfg)
	printTargets(os.Stdout, goals)
	stmts.print(os.Stdout)
	if err := writeJSON(cfg.out, machine, cfg, all, summary, goals, stmts, time.Since(began)); err != nil {
		return err
	}
	fmt.Printf("\nall results: %s (took %s)\n", cfg.out, time.Since(began).Round(time.Second))
	return nil
}

func brief(r measure.Result) string {
	return fmt.Sprintf("%.0f/s  start p50 %.1f ms p99 %.1f ms  complete p99 %.1f ms  n=%d errors=%d",
		r.ThroughputPerS, r.EnqueueToStartMS.P50, r.EnqueueToStartMS.P99, r.EnqueueToCompleteMS.P99, r.Created, r.Errors)
}

func runRiver(ctx context.Context, rc baseline.Config, cfg config, w string) (measure.Result, error) {
	switch w {
	case wSustained, wSustainedWide:
		return rc.Sustained(ctx, cfg.creators(w), cfg.sustainedDuration, cfg.sustainedMax)
	case wBurndown:
		return rc.Burndown(ctx, cfg.burndown)
	default:
		return rc.Rate(ctx, cfg.rate, cfg.rateDuration)
	}
}

func runOurs(ctx context.Context, srv *server, cfg config, w string) (measure.Result, error) {
	switch w {
	case wSustained, wSustainedWide:
		return srv.bench(ctx, "--assistant", "bench-noop", "--concurrency", strconv.Itoa(cfg.creators(w)),
			"--duration", cfg.sustainedDuration.String(), "--max-runs", strconv.Itoa(cfg.sustainedMax))
	case wSessions:
		return srv.bench(ctx, "--assistant", "bench-noop", "--concurrency", strconv.Itoa(cfg.concurrency), "--threads", strconv.Itoa(cfg.sessions),
			"--duration", cfg.sustainedDuration.String(), "--max-runs", strconv.Itoa(cfg.sustainedMax))
	case wBurndown:
		return srv.bench(ctx, "--assistant", "bench-noop", "--burndown", strconv.Itoa(cfg.burndown))
	default:
		return srv.bench(ctx, "--assistant", "bench-noop", "--rate", strconv.FormatFloat(cfg.rate, 'f', -1, 64),
			"--duration", cfg.rateDuration.String())
	}
}

// totalSlots is the slots of every worker of the server (--slots times --workers); 0 when
// --slots does not parse (the server then refuses to start anyway).
func totalSlots(cfg config) int {
	n := 0
	for item := range strings.SplitSeq(cfg.slots, ",") {
		_, count, _ := strings.Cut(item, "=")
		v, err := strconv.Atoi(strings.TrimSpace(count))
		if err != nil {
			return 0
		}
		n += v
	}
	return n * cfg.workers
}

// binaries are the programs benchall built.
type binaries struct{ agentserver, agentctl, noop string }

func executorName(executor string) string {
	if executor == "go" {
		return "Go"
	}
	return "C"
}

// build compiles the server and the CLI in the workspace, and the no-op executor alone:
// examples/noop/c/noop.c with cc, or with --executor go the Go module examples/noop.
func build(ctx context.Context, repo, bin, executor string) (binaries, error) {
	b := binaries{agentserver: filepath.Join(bin, "agentserver"), agentctl: filepath.Join(bin, "agentctl"), noop: filepath.Join(bin, "noop")}
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return b, err
	}
	if executor == "c" {
		src := filepath.Join(repo, "examples", "noop", "c", "noop.c")
		cmd := exec.CommandContext(ctx, "cc", "-O2", "-o", b.noop, src)
		if out, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("compiling %s (install a C compiler, e.g. apt-get install gcc, or pass --executor go): %w\n%s", src, err, out)
		}
	}
	// benchall itself runs with GOWORK=off; the services build in the workspace.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOWORK=") {
			env = append(env, kv)
		}
	}
	for _, step := range []struct {
		dir  string
		env  []string
		args []string
	}{
		{repo, env, []string{"build", "-o", bin + "/", "./services/agentserver/cmd/agentserver", "./services/agentctl/cmd/agentctl"}},
		{filepath.Join(repo, "examples", "noop"), append(slices.Clone(env), "GOWORK=off"), []string{"build", "-o", b.noop, "."}},
	} {
		if step.dir != repo && executor != "go" {
			continue
		}
		cmd := exec.CommandContext(ctx, "go", step.args...)
		cmd.Dir, cmd.Env = step.dir, step.env
		if out, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("go %s in %s: %w\n%s", strings.Join(step.args, " "), step.dir, err, out)
		}
	}
	return b, nil
}

// server is the running all-in-one.
type server struct {
	cmd  *exec.Cmd
	addr string
	bins binaries
	pids string
	done chan error
	// exited is closed when the server process has exited.
	exited chan struct{}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startServer(ctx context.Context, bins binaries, dbURL, slots string, workers int, dir string) (*server, error) {
	grpcAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "agentserver.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bins.agentserver, "dev", "-grpc-addr", grpcAddr, "-http-addr", httpAddr, "-drain-grace", "2s")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+dbURL, "WORKER_SLOTS="+slots, "WORKER_WORKDIR="+dir,
		"AGENTSERVER_WORKERS="+strconv.Itoa(workers))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	s := &server{cmd: cmd, addr: grpcAddr, bins: bins, done: make(chan error, 1), exited: make(chan struct{})}
	go func() { s.done <- cmd.Wait(); close(s.exited); logFile.Close() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", grpcAddr, time.Second)
		if err == nil {
			conn.Close()
			return s, nil
		}
		select {
		case err := <-s.done:
			s.done <- err
			return nil, fmt.Errorf("agentserver exited at start (%v); see %s", err, logFile.Name())
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), s.stop())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, errors.Join(fmt.Errorf("agentserver did not listen on %s within 60s", grpcAddr), s.stop())
		}
	}
}

func (s *server) stop() error {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		return nil
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return errors.New("agentserver did not stop within 30s of SIGTERM: killed")
	}
}

// bench runs agentctl bench --json with args and decodes its report.
func (s *server) bench(ctx context.Context, args ...string) (measure.Result, error) {
	full := append([]string{"--addr", s.addr, "--timeout", "60s", "bench", "--json", "--pids", s.pids}, args...)
	// A server that dies (or is killed by someone else) ends the workload at once, rather
	// than after agentctl's drain timeout.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	cmd := exec.CommandContext(ctx, s.bins.agentctl, full...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var res measure.Result
	select {
	case <-s.exited:
		return res, fmt.Errorf("agentserver exited during the workload; see agentserver.log (--keep keeps it)")
	default:
	}
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		return res, fmt.Errorf("agentctl %s: %v (output %q, stderr %q)", strings.Join(full, " "), errors.Join(err, jerr), out, stderr.String())
	}
	// agentctl exits 1 when runs failed; the result still counts, with its errors.
	return res, nil
}

// machineInfo describes where the figures were measured.
type machineInfo struct {
	CPUs              int     `json:"cpus"`
	CPUModel          string  `json:"cpu_model"`
	MemoryGiB         float64 `json:"memory_gib"`
	Kernel            string  `json:"kernel"`
	Go                string  `json:"go"`
	PostgreSQL        string  `json:"postgresql"`
	InsertCommitsPerS float64 `json:"insert_commits_per_s"`
}

func describeMachine(ctx context.Context, url string) (machineInfo, error) {
	m := machineInfo{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if kb, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
				v, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(kb), " kB"), 64)
				m.MemoryGiB = v / (1 << 20)
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPUModel = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return m, err
	}
	defer pool.Close()
	err = pool.QueryRow(ctx, `SHOW server_version`).Scan(&m.PostgreSQL)
	return m, err
}

// insertCommits measures single-row INSERT commits per second from conns connections: the
// ceiling of any design that commits once per job.
func insertCommits(ctx context.Context, url string, conns int, d time.Duration) (float64, error) {
	pool, err := pgxpool.New(ctx, withParam(url, "pool_max_conns", strconv.Itoa(conns)))
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS commits (id bigserial PRIMARY KEY, v int NOT NULL)`); err != nil {
		return 0, err
	}
	var mu sync.Mutex
	var n int
	var firstErr error
	start := time.Now()
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			c := 0
			for time.Since(start) < d && ctx.Err() == nil {
				if _, err := pool.Exec(ctx, `INSERT INTO commits (v) VALUES ($1)`, c); err != nil {
					mu.Lock()
					firstErr = cmp.Or(firstErr, err)
					mu.Unlock()
					return
				}
				c++
			}
			mu.Lock()
			n += c
			mu.Unlock()
		})
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds(), firstErr
}

// stat is a median with its spread over rounds.
type stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

func statOf(vals []float64) stat {
	if len(vals) == 0 {
		return stat{}
	}
	v := slices.Sorted(slices.Values(vals))
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return stat{Median: med, Min: v[0], Max: v[len(v)-1], N: len(v)}
}

// row is one line of the comparison.
type row struct {
	Workload string `json:"workload"`
	Metric   string `json:"metric"`
	// Better is "higher" or "lower", or empty for a figure that is neither (how busy the
	// machine was).
	Better string `json:"better"`
	Ours   stat   `json:"ours"`
	River  stat   `json:"river"`
	// Ratio is ours' median divided by River's.
	Ratio float64 `json:"ratio_ours_to_river"`
	// RoundRatios are ours / River round by round (each round runs both systems back to
	// back): the machine's drift between rounds cancels out of them, not out of Ratio.
	RoundRatios stat `json:"round_ratios"`
}

// metric is one figure of a workload's results, compared between the systems.
type metric struct {
	workload, metric, better string
	get                      func(measure.Result) float64
}

// metrics are the figures of the workloads the configuration ran, in order.
func metrics(cfg config) []metric {
	var ms []metric
	for _, w := range cfg.workloads() {
		switch w {
		case wSustained, wSustainedWide, wSessions:
			ms = append(ms,
				metric{w, "throughput (jobs/s)", "higher", func(r measure.Result) float64 { return r.ThroughputPerS }},
				metric{w, "create rate (jobs/s)", "higher", func(r measure.Result) float64 { return r.CreateRatePerS }},
				metric{w, "enqueue→complete p99 (ms)", "lower", func(r measure.Result) float64 { return r.EnqueueToCompleteMS.P99 }},
				metric{w, "CPU per job, all processes (µs)", "lower", cpuPerJob},
				metric{w, "whole machine busy (cores)", "", machineBusy})
		case wBurndown:
			ms = append(ms,
				metric{w, "throughput (jobs/s)", "higher", func(r measure.Result) float64 { return r.ThroughputPerS }},
				metric{w, "CPU per job, all processes (µs)", "lower", cpuPerJob},
				metric{w, "whole machine busy (cores)", "", machineBusy})
		case wLatency:
			ms = append(ms,
				metric{w, "enqueue→start p50 (ms)", "lower", func(r measure.Result) float64 { return r.EnqueueToStartMS.P50 }},
				metric{w, "enqueue→start p99 (ms)", "lower", func(r measure.Result) float64 { return r.EnqueueToStartMS.P99 }},
				metric{w, "enqueue→complete p99 (ms)", "lower", func(r measure.Result) float64 { return r.EnqueueToCompleteMS.P99 }},
				metric{w, "errors", "lower", func(r measure.Result) float64 { return float64(r.Errors) }})
		}
	}
	return ms
}

func summarize(all results, cfg config) []row {
	var rows []row
	for _, m := range metrics(cfg) {
		r := row{Workload: m.workload, Metric: m.metric, Better: m.better}
		var ours, river []float64
		for _, res := range all["ours"][m.workload] {
			ours = append(ours, m.get(res))
		}
		for _, res := range all["river"][m.workload] {
			river = append(river, m.get(res))
		}
		r.Ours, r.River = statOf(ours), statOf(river)
		if r.River.Median != 0 && r.Ours.N > 0 {
			r.Ratio = r.Ours.Median / r.River.Median
		}
		r.RoundRatios = roundRatios(ours, river)
		rows = append(rows, r)
	}
	return rows
}

// roundRatios divides ours by River's round by round, where both ran every round.
func roundRatios(ours, river []float64) stat {
	if len(ours) != len(river) {
		return stat{}
	}
	var out []float64
	for i := range ours {
		if river[i] != 0 {
			out = append(out, ours[i]/river[i])
		}
	}
	return statOf(out)
}

// cpuPerJob adds up the CPU per completed job of every process group (server or River's
// process, PostgreSQL, executors).
func cpuPerJob(r measure.Result) float64 {
	var us float64
	for _, c := range r.CPU {
		us += c.PerRunUS
	}
	return us
}

// machineBusy is how many of the machine's CPUs were busy on average over the window,
// whoever used them (/proc/stat): against the processes' own CPU it shows how busy the
// workload kept the machine, and what the measured processes do not account for.
func machineBusy(r measure.Result) float64 {
	if r.Machine == nil {
		return 0
	}
	return r.Machine.BusyCores
}

func workloadTitle(w string, cfg config) string {
	switch w {
	case wSustained, wSustainedWide:
		return fmt.Sprintf("sustained: %d creators, 1 job/call, %s", cfg.creators(w), cfg.sustainedDuration)
	case wSessions:
		return fmt.Sprintf("sessions: %d creators, %d threads, %s (ours only)", cfg.concurrency, cfg.sessions, cfg.sustainedDuration)
	case wBurndown:
		return fmt.Sprintf("burn-down of %d", cfg.burndown)
	default:
		return fmt.Sprintf("%.0f jobs/s offered for %s", cfg.rate, cfg.rateDuration)
	}
}

func printTable(w io.Writer, m machineInfo, cfg config, rows []row) {
	fmt.Fprintf(w, "\nagentserver (%s no-op executor, concurrency %d) vs River v0.51.2 (fetch cooldown 2ms, poll 20ms, 500 workers), same PostgreSQL, %d round(s)\n",
		executorName(cfg.executor), cfg.execConcurrency, cfg.rounds)
	fmt.Fprintf(w, "machine: %d CPUs (%s), %.1f GiB, PostgreSQL %s (durable=%v), %s; single-row INSERT commits: %.0f/s from %d connections\n\n",
		m.CPUs, m.CPUModel, m.MemoryGiB, m.PostgreSQL, cfg.durable, m.Go, m.InsertCommitsPerS, cfg.concurrency)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tmetric\tours median [min–max]\tRiver median [min–max]\tours/River\tper round: median [min–max]")
	last := ""
	for _, r := range rows {
		title := ""
		if r.Workload != last {
			title, last = workloadTitle(r.Workload, cfg), r.Workload
		}
		ratio := "-"
		if r.Ratio != 0 {
			ratio = fmt.Sprintf("%.2f×", r.Ratio)
			if r.Better != "" {
				ratio += fmt.Sprintf(" (%s is better)", r.Better)
			}
		}
		perRound := "-"
		if r.RoundRatios.N > 1 {
			perRound = fmtStat(r.RoundRatios) + "×"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", title, r.Metric, fmtStat(r.Ours), fmtStat(r.River), ratio, perRound)
	}
	tw.Flush()
}

func fmtStat(s stat) string {
	if s.N == 0 {
		return "-"
	}
	f := func(v float64) string {
		switch {
		case v >= 100:
			return strconv.FormatFloat(v, 'f', 0, 64)
		case v >= 10:
			return strconv.FormatFloat(v, 'f', 1, 64)
		default:
			return strconv.FormatFloat(v, 'f', 2, 64)
		}
	}
	if s.N == 1 {
		return f(s.Median)
	}
	return fmt.Sprintf("%s [%s–%s]", f(s.Median), f(s.Min), f(s.Max))
}

func writeJSON(path string, m machineInfo, cfg config, all results, rows []row, goals []target, stmts *statements, took time.Duration) error {
	doc := map[string]any{
		"machine": m,
		"config": map[string]any{
			"rounds": cfg.rounds, "quick": cfg.quick, "durable": cfg.durable, "concurrency": cfg.concurrency, "wide_concurrency": cfg.wideConcurrency, "sessions": cfg.sessions,
			"sustained_duration_s": cfg.sustainedDuration.Seconds(), "sustained_max": cfg.sustainedMax,
			"burndown": cfg.burndown, "rate": cfg.rate, "rate_duration_s": cfg.rateDuration.Seconds(), "slots": cfg.slots, "executor": cfg.executor, "executor_concurrency": cfg.execConcurrency,
			"workers": cfg.workers,
			"river":   map[string]any{"version": "v0.51.2", "max_workers": 500, "fetch_cooldown_ms": 2, "fetch_poll_interval_ms": 20},
		},
		"summary": rows,
		"targets": goals,
		"results": all,
		"took_s":  took.Seconds(),
	}
	if stmts != nil {
		doc["statements"] = stmts.last
		doc["wal_bytes_per_job"] = stmts.walPerJob
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// withParam adds a query parameter to a connection URL.
func withParam(url, key, value string) string {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + key + "=" + value
}

// statement is one normalised statement of pg_stat_statements over one workload.
type statement struct {
	Query       string  `json:"query"`
	Calls       int64   `json:"calls"`
	CallsPerJob float64 `json:"calls_per_job"`
	TotalMS     float64 `json:"total_ms"`
	MeanMS      float64 `json:"mean_ms"`
	PlanMS      float64 `json:"plan_ms"` // total planning time (track_planning)
	// JITMS is the total time spent compiling the statement (PostgreSQL 15's jit_*_time
	// columns): a plan priced above jit_above_cost is compiled at every execution, which
	// a deep queue can cause in statements that read a few rows (docs/performance-history.md).
	JITMS float64 `json:"jit_ms"`
	Rows  int64   `json:"rows"`
	// WALBytesPerJob is the WAL the statement wrote over the workload, per job.
	WALBytesPerJob float64 `json:"wal_bytes_per_job"`
}

// statements reads pg_stat_statements around each workload (--statements). A nil
// *statements does nothing.
type statements struct {
	pool *pgxpool.Pool
	// last holds, per "system workload", the statements of the last round.
	last map[string][]statement
	// walStart is the server's WAL position at the last reset; walPerJob holds, per
	// "system workload", the WAL the whole server wrote in the last round per job (its
	// statements, autovacuum and checkpoints).
	walStart  string
	walPerJob map[string]float64
}

func newStatements(ctx context.Context, url string) (*statements, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, err
	}
	if _, err := pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		pool.Close()
		return nil, fmt.Errorf("loading pg_stat_statements: %w", err)
	}
	return &statements{pool: pool, last: map[string][]statement{}, walPerJob: map[string]float64{}}, nil
}

func (s *statements) close() { s.pool.Close() }

func (s *statements) reset(ctx context.Context) {
	if s == nil {
		return
	}
	if err := s.pool.QueryRow(ctx, `SELECT pg_stat_statements_reset()::text, pg_current_wal_lsn()::text`).Scan(new(string), &s.walStart); err != nil {
		logf("resetting pg_stat_statements: %v", err)
	}
}

// collect keeps the statements run in database db since the reset, by total time.
func (s *statements) collect(ctx context.Context, system, workload, db string, jobs int) {
	if s == nil {
		return
	}
	var wal float64
	if err := s.pool.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)`, s.walStart).Scan(&wal); err != nil {
		logf("reading the WAL position: %v", err)
	} else if jobs > 0 {
		s.walPerJob[system+" "+workload] = wal / float64(jobs)
	}
	rows, err := s.pool.Query(ctx, `
		SELECT regexp_replace(query, '\s+', ' ', 'g'), calls, total_exec_time, total_plan_time,
			jit_generation_time + jit_inlining_time + jit_optimization_time + jit_emission_time, rows,
			wal_bytes::float8
		FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
		WHERE d.datname = $1
		ORDER BY total_exec_time + total_plan_time DESC LIMIT 15`, db)
	if err != nil {
		logf("reading pg_stat_statements: %v", err)
		return
	}
	defer rows.Close()
	var out []statement
	for rows.Next() {
		var st statement
		var walBytes float64
		if err := rows.Scan(&st.Query, &st.Calls, &st.TotalMS, &st.PlanMS, &st.JITMS, &st.Rows, &walBytes); err != nil {
			logf("reading pg_stat_statements: %v", err)
			return
		}
		if st.Calls > 0 {
			st.MeanMS = st.TotalMS / float64(st.Calls)
		}
		if jobs > 0 {
			st.CallsPerJob = float64(st.Calls) / float64(jobs)
			st.WALBytesPerJob = walBytes / float64(jobs)
		}
		out = append(out, st)
	}
	s.last[system+" "+workload] = out
}

func (s *statements) print(w io.Writer) {
	if s == nil {
		return
	}
	for _, key := range slices.Sorted(maps.Keys(s.last)) {
		fmt.Fprintf(w, "\nstatements of %s (last round, by total time; the server wrote %.0f bytes of WAL per job):\n", key, s.walPerJob[key])
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "calls/job\tmean ms\ttotal ms\tplan ms\tjit ms\tWAL B/job\tquery")
		for _, st := range s.last[key] {
			q := st.Query
			if len(q) > 110 {
				q = q[:110] + "…"
			}
			fmt.Fprintf(tw, "%.2f\t%.3f\t%.0f\t%.0f\t%.0f\t%.0f\t%s\n", st.CallsPerJob, st.MeanMS, st.TotalMS, st.PlanMS, st.JITMS, st.WALBytesPerJob, q)
		}
		tw.Flush()
	}
}
