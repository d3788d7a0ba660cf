// Command scheduler runs the scheduler service: worker sessions, placement, leases and
// recovery. Configure it with flags or the environment variables named in -help.
//
// With Consul (CONSUL_HTTP_ADDR set, or --discovery consul) it registers as
// agentserver-scheduler with a gRPC health check on its worker port, so workers given
// SCHEDULER_ADDR=consul:///agentserver-scheduler find it, and deregisters before it stops
// serving on SIGTERM or SIGINT.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/agentserver/agentserver/pkg/config"
	"github.com/agentserver/agentserver/pkg/discovery"
	"github.com/agentserver/agentserver/pkg/discovery/announce"
	"github.com/agentserver/agentserver/pkg/store"
	"github.com/agentserver/agentserver/services/scheduler/scheduler"
)

func main() {
	config.ApplyGCPercent()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "scheduler:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg := scheduler.Defaults()
	disc := announce.Defaults()
	var dbURL string
	set := config.New("scheduler")
	set.String(&dbURL, "database-url", "DATABASE_URL", "", "PostgreSQL URL (required); LISTEN needs a direct connection, not PgBouncer")
	scheduler.Bind(set, &cfg)
	announce.Bind(set, &disc)
	if err := set.Parse(os.Args[1:]); err != nil {
		return err
	}
	if dbURL == "" {
		return fmt.Errorf("DATABASE_URL is not set: point it at PostgreSQL (or run `agentserver dev` for an all-in-one with its own database)")
	}
	cfg.DatabaseURL = dbURL
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	d, err := announce.Open(disc, log)
	if err != nil {
		return err
	}
	sigCtx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := store.Migrate(sigCtx, dbURL); err != nil {
		return err
	}
	st, err := store.Open(sigCtx, dbURL)
	if err != nil {
		return err
	}
	defer st.Close()
	srv, err := scheduler.New(cfg, st, log)
	if err != nil {
		return err
	}

	// Deregister before the sessions close, so reconnecting workers resolve the other
	// schedulers only.
	return announce.Serve(sigCtx, d, disc, discovery.Registration{
		Service: announce.Scheduler,
		ID:      srv.ID(),
		Port:    announce.Port(srv.Addr()),
		Check:   discovery.CheckGRPC,
	}, log, srv.Run)
}
