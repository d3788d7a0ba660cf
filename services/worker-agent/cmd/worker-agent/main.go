// Command worker-agent runs a worker: it connects to a scheduler, reports its slots and
// executes runs through executor processes. It needs no database credentials.
//
// `worker-agent --probe` prints the inventory the worker would register (slots, GPUs,
// memory) as JSON and exits: 0, or 1 with the reason when its GPU slots cannot be backed.
//
// With Consul (CONSUL_HTTP_ADDR set, or --discovery consul) SCHEDULER_ADDR may be
// consul:///agentserver-scheduler, and the worker registers as agentserver-worker with a
// TTL check (it has no listener to probe), tagged with its pool ("pool-<name>") and its
// slot types ("cpu", "gpu", ...); it deregisters when it starts draining.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/agentserver/agentserver/pkg/config"
	"github.com/agentserver/agentserver/pkg/discovery"
	"github.com/agentserver/agentserver/pkg/discovery/announce"
	"github.com/agentserver/agentserver/services/worker-agent/worker"
)

func main() {
	config.ApplyGCPercent()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "worker-agent:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg := worker.Defaults()
	disc := announce.Defaults()
	set := config.New("worker-agent")
	worker.Bind(set, &cfg)
	announce.Bind(set, &disc)
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
	d, err := announce.Open(disc, log)
	if err != nil {
		return err
	}
	if err := announce.CheckTargets(d, "SCHEDULER_ADDR", cfg.SchedulerAddrs); err != nil {
		return err
	}
	w, err := worker.New(cfg, log, worker.WithDialOptions(discovery.DialOptions(d)...))
	if err != nil {
		return err
	}
	// SIGTERM drains: no new work, running runs finish within the grace period.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	slots := slices.Sorted(maps.Keys(w.Slots()))
	reg, err := announce.Register(context.Background(), d, disc, discovery.Registration{
		Service: announce.Worker,
		ID:      w.ID(),
		Check:   discovery.CheckTTL,
		Tags:    append([]string{"pool-" + w.Pool()}, slots...),
		Meta:    map[string]string{"pool": w.Pool(), "slots": worker.FormatSlots(w.Slots())},
	}, log)
	if err != nil {
		return err
	}
	defer reg.Deregister()
	go func() {
		<-ctx.Done()
		reg.Deregister() // draining: it takes no more work
	}()
	return w.Run(ctx)
}
