// Command gateway runs the public API (gRPC and REST). Configure it with flags or the
// environment variables named in -help.
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
	"github.com/agentserver/agentserver/services/gateway/gateway"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg := gateway.Defaults()
	var dbURL string
	set := config.New("gateway")
	set.String(&dbURL, "database-url", "DATABASE_URL", "", "PostgreSQL URL (required)")
	gateway.Bind(set, &cfg)
	if err := set.Parse(os.Args[1:]); err != nil {
		return err
	}
	if dbURL == "" {
		return fmt.Errorf("DATABASE_URL is not set: point it at PostgreSQL (or run `agentserver dev` for an all-in-one with its own database)")
	}
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
	srv, err := gateway.New(cfg, st, log)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}
