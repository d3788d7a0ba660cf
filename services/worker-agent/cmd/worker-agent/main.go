// Command worker-agent runs a worker: it connects to a scheduler, reports its slots and
// executes runs through executor processes. It needs no database credentials.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/agentserver/agentserver/pkg/config"
	"github.com/agentserver/agentserver/services/worker-agent/worker"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "worker-agent:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg := worker.Defaults()
	set := config.New("worker-agent")
	worker.Bind(set, &cfg)
	if err := set.Parse(os.Args[1:]); err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	w, err := worker.New(cfg, log)
	if err != nil {
		return err
	}
	// SIGTERM drains: no new work, running runs finish within the grace period.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return w.Run(ctx)
}
