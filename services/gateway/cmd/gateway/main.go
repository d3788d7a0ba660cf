// Command gateway runs the public API (gRPC and REST). Configure it with flags or the
// environment variables named in -help.
//
// With Consul (CONSUL_HTTP_ADDR set, or --discovery consul) it registers as
// agentserver-gateway with a gRPC health check on its gRPC port, and deregisters before
// it stops serving on SIGTERM or SIGINT.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/agentserver/agentserver/pkg/config"
	"github.com/agentserver/agentserver/pkg/discovery"
	"github.com/agentserver/agentserver/pkg/discovery/announce"
	"github.com/agentserver/agentserver/pkg/store"
	"github.com/agentserver/agentserver/services/gateway/gateway"
)

func main() {
	config.ApplyGCPercent()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg := gateway.Defaults()
	disc := announce.Defaults()
	var dbURL, readURL string
	set := config.New("gateway")
	set.String(&dbURL, "database-url", "DATABASE_URL", "", "PostgreSQL URL (required)")
	set.String(&readURL, "database-read-url", "DATABASE_READ_URL", "",
		"read replica URL (optional): List calls read there and fall back to DATABASE_URL while it is down")
	gateway.Bind(set, &cfg)
	announce.Bind(set, &disc)
	if err := set.Parse(os.Args[1:]); err != nil {
		return err
	}
	if dbURL == "" {
		return fmt.Errorf("DATABASE_URL is not set: point it at PostgreSQL (or run `agentserver dev` for an all-in-one with its own database)")
	}
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
	st, err := store.Open(sigCtx, dbURL, store.WithReadReplica(readURL), store.WithLogger(log))
	if err != nil {
		return err
	}
	defer st.Close()
	srv, err := gateway.New(cfg, st, log)
	if err != nil {
		return err
	}

	// The server runs until the signal has been handled: deregistering first makes
	// peers and load balancers stop routing here before the listeners close.
	return announce.Serve(sigCtx, d, disc, discovery.Registration{
		Service: announce.Gateway,
		ID:      srv.ID(),
		Port:    announce.Port(srv.GRPCAddr()),
		Check:   discovery.CheckGRPC,
		Meta:    map[string]string{"http_port": strconv.Itoa(announce.Port(srv.HTTPAddr()))},
	}, log, srv.Run)
}
