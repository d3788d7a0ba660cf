// Package dev runs the whole of agentserver in one process for development and small
// installs: a gateway, a scheduler and a worker, and, when no database URL is given, a
// private PostgreSQL started from the local installation with its data under a state
// directory (reused on the next start). It wires the services together; it owns no
// behaviour of its own.
package dev

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/agentserver/agentserver/pkg/config"
	"github.com/agentserver/agentserver/pkg/pgserver"
	"github.com/agentserver/agentserver/pkg/store"
	"github.com/agentserver/agentserver/services/gateway/gateway"
	"github.com/agentserver/agentserver/services/scheduler/scheduler"
	"github.com/agentserver/agentserver/services/worker-agent/worker"
)

// Config configures the all-in-one server.
type Config struct {
	// DatabaseURL is PostgreSQL; empty starts a private one under StateDir.
	DatabaseURL string
	// StateDir holds the private PostgreSQL's data.
	StateDir string
	// Gateway, Scheduler and Worker configure the three services. The worker connects to
	// the in-process scheduler whatever Worker.SchedulerAddrs says.
	Gateway   gateway.Config
	Scheduler scheduler.Config
	Worker    worker.Config
	// Workers is how many worker-agents to run in the process.
	Workers int
}

// Defaults returns the default configuration: REST :8080, gRPC :9090, one worker with
// WORKER_SLOTS (default cpu=4), the scheduler on a free loopback port.
func Defaults() Config {
	s := scheduler.Defaults()
	s.GRPCAddr = "127.0.0.1:0"
	return Config{StateDir: defaultStateDir(), Gateway: gateway.Defaults(), Scheduler: s, Worker: worker.Defaults(), Workers: 1}
}

// defaultStateDir is $AGENTSERVER_STATE_DIR, else a directory the postgres user can reach
// when running as root (/var/lib/agentserver), else $XDG_STATE_HOME/agentserver or
// ~/.local/state/agentserver.
func defaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/agentserver"
	}
	if x := os.Getenv("XDG_STATE_HOME"); x != "" {
		return filepath.Join(x, "agentserver")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "agentserver")
	}
	return ".agentserver"
}

// Bind registers the settings on set.
func Bind(set *config.Set, cfg *Config) {
	set.String(&cfg.DatabaseURL, "database-url", "DATABASE_URL", cfg.DatabaseURL, "PostgreSQL URL; empty starts a private PostgreSQL under --state-dir")
	set.String(&cfg.StateDir, "state-dir", "AGENTSERVER_STATE_DIR", cfg.StateDir, "where the private PostgreSQL keeps its data")
	set.Int(&cfg.Workers, "workers", "AGENTSERVER_WORKERS", cfg.Workers, "worker-agents to run in the process")
	gateway.Bind(set, &cfg.Gateway)
	scheduler.Bind(set.Prefixed("scheduler-"), &cfg.Scheduler)
	set.String(&cfg.Worker.Slots, "slots", "WORKER_SLOTS", cfg.Worker.Slots, "slots of each worker, e.g. cpu=4,gpu=1")
	set.String(&cfg.Worker.Pool, "pool", "WORKER_POOL", cfg.Worker.Pool, "worker pool name")
	set.String(&cfg.Worker.WorkDir, "workdir", "WORKER_WORKDIR", cfg.Worker.WorkDir, "working directory of executor processes (default: current)")
	set.Duration(&cfg.Worker.DrainGrace, "drain-grace", "WORKER_DRAIN_GRACE", cfg.Worker.DrainGrace, "how long running runs may finish on shutdown")
}

// Addrs are where a running server listens.
type Addrs struct {
	HTTP, GRPC, Scheduler net.Addr
	// GatewayAdmin and SchedulerAdmin serve /healthz, /readyz and /metrics; nil unless
	// Gateway.AdminAddr and Scheduler.AdminAddr are set.
	GatewayAdmin, SchedulerAdmin net.Addr
	DatabaseURL                  string
}

// Run starts everything, calls ready (if not nil) once every service listens, and runs
// until ctx ends; then it drains the workers and stops the rest in reverse order.
func Run(ctx context.Context, cfg Config, log *slog.Logger, ready func(Addrs)) error {
	if cfg.Workers < 0 {
		return errors.New("workers must not be negative")
	}
	dbURL := cfg.DatabaseURL
	if dbURL == "" {
		if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
			return fmt.Errorf("creating state directory %s (set --state-dir or AGENTSERVER_STATE_DIR): %w", cfg.StateDir, err)
		}
		log.Info("starting private PostgreSQL", "data", filepath.Join(cfg.StateDir, "postgres"))
		pg, err := pgserver.Start(ctx, pgserver.Options{
			DataDir: filepath.Join(cfg.StateDir, "postgres"), Database: "agentserver", Logger: log.With("component", "postgres"),
		})
		if err != nil {
			return fmt.Errorf("starting private PostgreSQL (set DATABASE_URL to use your own): %w", err)
		}
		defer func() {
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if err := pg.Stop(stopCtx); err != nil {
				log.Error("stopping PostgreSQL", "err", err)
			}
		}()
		dbURL = pg.URL("agentserver")
	}
	if err := store.Migrate(ctx, dbURL); err != nil {
		return err
	}
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		return err
	}
	defer st.Close()

	cfg.Scheduler.DatabaseURL = dbURL
	sched, err := scheduler.New(cfg.Scheduler, st, log.With("service", "scheduler"))
	if err != nil {
		return err
	}
	gw, err := gateway.New(cfg.Gateway, st, log.With("service", "gateway"))
	if err != nil {
		return err
	}
	workers := make([]*worker.Worker, cfg.Workers)
	for i := range workers {
		wc := cfg.Worker
		wc.SchedulerAddrs = sched.Addr().String()
		// The embedded workers talk to the scheduler in process (no encoding, framing or
		// socket per message); external worker-agents still connect to sched.Addr().
		if workers[i], err = worker.New(wc, log.With("service", "worker"), worker.WithSchedulerConn(sched.InProcess())); err != nil {
			return err
		}
	}

	// Workers drain first (they need the scheduler to hand results in), then the
	// gateway and scheduler stop.
	serviceCtx, stopServices := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServices()
	services, serviceCtx := errgroup.WithContext(serviceCtx)
	services.Go(func() error { return sched.Run(serviceCtx) })
	services.Go(func() error { return gw.Run(serviceCtx) })
	workerCtx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	workersGroup, workerCtx := errgroup.WithContext(workerCtx)
	for _, w := range workers {
		workersGroup.Go(func() error { return w.Run(workerCtx) })
	}
	if ready != nil {
		ready(Addrs{HTTP: gw.HTTPAddr(), GRPC: gw.GRPCAddr(), Scheduler: sched.Addr(), DatabaseURL: dbURL,
			GatewayAdmin: gw.AdminAddr(), SchedulerAdmin: sched.AdminAddr()})
	}
	log.Info("agentserver is up", "rest", gw.HTTPAddr().String(), "grpc", gw.GRPCAddr().String(), "workers", cfg.Workers, "slots", cfg.Worker.Slots)

	select {
	case <-ctx.Done():
	case <-serviceCtx.Done():
	}
	stopWorkers()
	werr := workersGroup.Wait()
	stopServices()
	serr := services.Wait()
	return errors.Join(werr, serr)
}
