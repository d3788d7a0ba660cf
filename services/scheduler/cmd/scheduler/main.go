// Command scheduler runs the scheduler service: worker sessions, placement, leases and
// recovery. Configure it with flags or the environment variables named in -help.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/agentserver/agentserver/pkg/config"
	"github.com/agentserver/agentserver/pkg/store"
	"github.com/agentserver/agentserver/services/scheduler/scheduler"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "scheduler:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg := scheduler.Defaults()
	var dbURL string
	set := config.New("scheduler")
	set.String(&dbURL, "database-url", "DATABASE_URL", "", "PostgreSQL URL (required); LISTEN needs a direct connection, not PgBouncer")
	scheduler.Bind(set, &cfg)
	if err := set.Parse(os.Args[1:]); err != nil {
		return err
	}
	if dbURL == "" {
		return fmt.Errorf("DATABASE_URL is not set: point it at PostgreSQL (or run `agentserver dev` for an all-in-one with its own database)")
	}
	cfg.DatabaseURL = dbURL
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := store.Migrate(ctx, dbURL); err != nil {
		return err
	}
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		return err
	}
	defer st.Close()
	srv, err := scheduler.New(cfg, st, log)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}
