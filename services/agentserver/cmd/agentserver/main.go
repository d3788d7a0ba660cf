// Command agentserver is the all-in-one binary: `agentserver dev` runs the gateway, a
// scheduler and a worker in one process (with a private PostgreSQL when DATABASE_URL is
// unset); `agentserver migrate` applies the database migrations and exits.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/agentserver/agentserver/pkg/config"
	"github.com/agentserver/agentserver/pkg/store"
	"github.com/agentserver/agentserver/services/agentserver/dev"
)

const usage = `usage: agentserver <command> [flags]

commands:
  dev       run gateway, scheduler and worker in one process (REST :8080, gRPC :9090);
            starts a private PostgreSQL when DATABASE_URL is unset
  migrate   apply database migrations to DATABASE_URL and exit

Run 'agentserver <command> -help' for its flags.`

func main() {
	config.ApplyGCPercent()
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "agentserver:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, usage)
		return errors.New("no command given")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	switch args[0] {
	case "dev":
		cfg := dev.Defaults()
		set := config.New("agentserver dev")
		dev.Bind(set, &cfg)
		if err := set.Parse(args[1:]); err != nil {
			return err
		}
		return dev.Run(ctx, cfg, log, nil)
	case "migrate":
		var url string
		set := config.New("agentserver migrate")
		set.String(&url, "database-url", "DATABASE_URL", "", "PostgreSQL URL")
		if err := set.Parse(args[1:]); err != nil {
			return err
		}
		if url == "" {
			return errors.New("DATABASE_URL is not set")
		}
		if err := store.Migrate(ctx, url); err != nil {
			return err
		}
		fmt.Println("migrations applied")
		return nil
	case "-h", "-help", "--help", "help":
		fmt.Println(usage)
		return nil
	}
	fmt.Fprintln(os.Stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}
