// Command worker-agent runs a worker: it connects to a scheduler, reports its slots and
// executes runs through executor processes. It needs no database credentials.
//
// `worker-agent --probe` prints the inventory the worker would register (slots, GPUs,
// memory) as JSON and exits: 0, or 1 with the reason when its GPU slots cannot be backed.
package main

import (
	"context"
	"encoding/json"
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
	var probe bool
	set.Bool(&probe, "probe", "", false, "print the inventory this worker would report (slots, GPUs, memory) as JSON and exit")
	if err := set.Parse(os.Args[1:]); err != nil {
		return err
	}
	if probe {
		report, err := worker.Probe(cfg)
		if err != nil {
			return err
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(report)
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
