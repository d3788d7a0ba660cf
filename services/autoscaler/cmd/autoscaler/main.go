// Command autoscaler scales agentserver's worker pools and gateways.
//
//	autoscaler run --policy FILE --driver FILE --scheduler-addr ADDRS [--gateway-addrs ADDRS] [--listen ADDR]
//	autoscaler run --policy FILE --driver FILE --metrics-url URL [--listen ADDR]
//	autoscaler simulate --trace FILE --policy FILE [--seed N] [--out DIR]
//
// `run` evaluates the policy every interval against the cluster's statistics (the
// schedulers' GetClusterStats and the gateways' GetLatency RPCs, or a JSON document over
// HTTP) and applies its decisions through a driver (local processes, docker compose, or a
// command);
// `simulate` replays an arrival trace through the same policy and writes a report.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/agentserver/agentserver/pkg/config"
	"github.com/agentserver/agentserver/pkg/discovery"
	"github.com/agentserver/agentserver/pkg/discovery/announce"
	"github.com/agentserver/agentserver/services/autoscaler/internal/api"
	"github.com/agentserver/agentserver/services/autoscaler/internal/controller"
	"github.com/agentserver/agentserver/services/autoscaler/internal/driver"
	"github.com/agentserver/agentserver/services/autoscaler/internal/metrics"
	"github.com/agentserver/agentserver/services/autoscaler/internal/policy"
	"github.com/agentserver/agentserver/services/autoscaler/internal/simulate"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "autoscaler:", err)
		os.Exit(1)
	}
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "autoscaler",
		Short:         "Scale agentserver worker pools and gateways on queue depth, utilisation and latency",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newRunCmd(stdout, stderr), newSimulateCmd(stdout))
	return root
}

// runConfig holds the settings of `autoscaler run`.
type runConfig struct {
	Policy        string
	Driver        string
	SchedulerAddr string
	GatewayAddrs  string
	RPCTimeout    time.Duration
	MetricsURL    string
	Listen        string
	History       int
	Discovery     string
}

func newRunCmd(stdout, stderr io.Writer) *cobra.Command {
	var cfg runConfig
	set := config.New("run")
	set.String(&cfg.Policy, "policy", "AUTOSCALER_POLICY", "", "scaling policy YAML (see examples/policy.yaml)")
	set.String(&cfg.Driver, "driver", "AUTOSCALER_DRIVER", "", "driver YAML: process, compose or command (see examples/driver-*.yaml)")
	set.String(&cfg.SchedulerAddr, "scheduler-addr", "SCHEDULER_ADDR", "",
		"schedulers' gRPC targets, comma-separated (host:port, dns:///..., consul:///...); any one answers GetClusterStats for the cluster, the next is tried on failure")
	set.String(&cfg.GatewayAddrs, "gateway-addrs", "AUTOSCALER_GATEWAY_ADDRS", "",
		"gateways' gRPC targets, comma-separated, one per gateway; their GetLatency p95s are combined (the largest); required when the policy scales gateways")
	set.Duration(&cfg.RPCTimeout, "rpc-timeout", "AUTOSCALER_RPC_TIMEOUT", metrics.DefaultRPCTimeout, "timeout of one statistics call to one scheduler or gateway")
	set.String(&cfg.MetricsURL, "metrics-url", "AUTOSCALER_METRICS_URL", "",
		"instead of --scheduler-addr/--gateway-addrs: URL of a cluster statistics JSON document (see internal/metrics.Document)")
	set.String(&cfg.Listen, "listen", "AUTOSCALER_LISTEN", ":8095", "HTTP address of /v1/decisions, /v1/status, /metrics and /healthz; empty disables")
	set.Int(&cfg.History, "history", "AUTOSCALER_HISTORY", controller.DefaultHistory, "decisions kept in memory")
	set.String(&cfg.Discovery, "discovery", "AGENTSERVER_DISCOVERY", "",
		"how consul:///<service> targets resolve: consul, or static to allow host:port targets only (default: consul when CONSUL_HTTP_ADDR is set)")
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the control loop: observe, decide, scale through the driver",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Flags were parsed by cobra; this reports bad environment values.
			if err := set.Parse(nil); err != nil {
				return err
			}
			log := slog.New(slog.NewJSONHandler(stderr, nil))
			return run(cmd.Context(), cfg, log, stdout)
		},
	}
	cmd.Flags().AddGoFlagSet(set.FlagSet())
	return cmd
}

// sourceFor builds the metrics source `run` reads: the schedulers' GetClusterStats and
// the gateways' GetLatency over gRPC (metrics.Source over metrics.SchedulerStats and
// metrics.GatewayStats), or a JSON document over HTTP (metrics.HTTPSource). The returned
// function releases the source's connections. dial are added to the connections' options
// (discovery.DialOptions, so consul:/// and static:/// targets resolve).
func sourceFor(cfg runConfig, pol policy.Config, log *slog.Logger, d discovery.Discovery, dial ...grpc.DialOption) (controller.MetricsSource, func() error, error) {
	noop := func() error { return nil }
	schedulers, gateways := metrics.SplitTargets(cfg.SchedulerAddr), metrics.SplitTargets(cfg.GatewayAddrs)
	switch {
	case cfg.MetricsURL != "" && (len(schedulers) > 0 || len(gateways) > 0):
		return nil, nil, errors.New("--metrics-url and --scheduler-addr/--gateway-addrs are alternatives: pass one " +
			"(SCHEDULER_ADDR and AUTOSCALER_GATEWAY_ADDRS in the environment count too)")
	case cfg.MetricsURL != "":
		return &metrics.HTTPSource{URL: cfg.MetricsURL, Policy: pol}, noop, nil
	case len(schedulers) == 0:
		if len(gateways) > 0 {
			return nil, nil, errors.New("--scheduler-addr: required with --gateway-addrs (the schedulers report queue depth and slots)")
		}
		return nil, nil, errors.New("no metrics source configured: pass --scheduler-addr (or SCHEDULER_ADDR), the schedulers' " +
			"gRPC addresses, and --gateway-addrs when the policy scales gateways; or --metrics-url, the URL of a JSON " +
			"statistics document (queue depth per slot type, workers and slots per pool, gateway p95)")
	case pol.Gateway != nil && len(gateways) == 0:
		return nil, nil, fmt.Errorf("--gateway-addrs: required: the policy scales the gateways (%q) on their p95 latency", pol.Gateway.Name)
	}
	if pol.Gateway == nil && len(gateways) > 0 {
		log.Info("the policy does not scale gateways: --gateway-addrs is not used")
		gateways = nil
	}
	cluster, err := metrics.NewSchedulerStats(schedulers, cfg.RPCTimeout, dial...)
	if err != nil {
		return nil, nil, fmt.Errorf("--scheduler-addr: %w", err)
	}
	src := &metrics.Source{Cluster: cluster, Policy: pol, Logger: log}
	if len(gateways) == 0 {
		return src, cluster.Close, nil
	}
	if services, ok := consulServices(gateways); ok && d != nil {
		// A Consul name covers many gateways: ask each passing instance for its own p95.
		gw := &metrics.InstanceGatewayStats{Timeout: cfg.RPCTimeout, Log: log, Resolve: func(ctx context.Context) ([]string, error) {
			var addrs []string
			for _, svc := range services {
				insts, err := d.Resolve(ctx, svc)
				if err != nil {
					return nil, err
				}
				for _, in := range insts {
					addrs = append(addrs, in.Addr())
				}
			}
			return addrs, nil
		}}
		src.Gateway = gw
		return src, func() error { return errors.Join(gw.Close(), cluster.Close()) }, nil
	}
	gw, err := metrics.NewGatewayStats(gateways, cfg.RPCTimeout, log, dial...)
	if err != nil {
		_ = cluster.Close()
		return nil, nil, fmt.Errorf("--gateway-addrs: %w", err)
	}
	src.Gateway = gw
	return src, func() error { return errors.Join(gw.Close(), cluster.Close()) }, nil
}

// consulServices returns the service names of targets when every one is consul:///name.
func consulServices(targets []string) ([]string, bool) {
	var out []string
	for _, t := range targets {
		name, ok := strings.CutPrefix(strings.TrimSpace(t), discovery.SchemeConsul+":///")
		if !ok || name == "" {
			return nil, false
		}
		out = append(out, name)
	}
	return out, len(out) > 0
}

func run(ctx context.Context, cfg runConfig, log *slog.Logger, stdout io.Writer) error {
	if cfg.Policy == "" {
		return errors.New("--policy: required (a scaling policy YAML file)")
	}
	if cfg.Driver == "" {
		return errors.New("--driver: required (a driver YAML file: kind process, compose or command)")
	}
	if cfg.RPCTimeout <= 0 {
		return fmt.Errorf("--rpc-timeout: must be > 0 (got %s)", cfg.RPCTimeout)
	}
	data, err := os.ReadFile(cfg.Policy)
	if err != nil {
		return fmt.Errorf("--policy: %w", err)
	}
	pol, err := policy.Parse(data)
	if err != nil {
		return fmt.Errorf("--policy %s: %w", cfg.Policy, err)
	}
	disc := announce.Defaults()
	disc.Mode = cfg.Discovery
	d, err := announce.Open(disc, log)
	if err != nil {
		return fmt.Errorf("--discovery: %w", err)
	}
	if err := errors.Join(announce.CheckTargets(d, "--scheduler-addr", metrics.SplitTargets(cfg.SchedulerAddr)...),
		announce.CheckTargets(d, "--gateway-addrs", metrics.SplitTargets(cfg.GatewayAddrs)...)); err != nil {
		return err
	}
	src, closeSource, err := sourceFor(cfg, pol, log, d, discovery.DialOptions(d)...)
	if err != nil {
		return err
	}
	defer func() {
		if err := closeSource(); err != nil {
			log.Warn("closing the metrics source", "err", err)
		}
	}()
	data, err = os.ReadFile(cfg.Driver)
	if err != nil {
		return fmt.Errorf("--driver: %w", err)
	}
	loaded, err := driver.Load(data, driver.Options{Logger: log})
	if err != nil {
		return fmt.Errorf("--driver %s: %w", cfg.Driver, err)
	}
	// The process driver's workers are our children: drain them whatever happens next.
	defer func() {
		if err := loaded.Shutdown(context.WithoutCancel(ctx)); err != nil {
			log.Error("stopping workers", "err", err)
		}
	}()
	ctrl, err := controller.New(controller.Config{Policy: pol, Source: src, Driver: loaded.Driver, Logger: log, History: cfg.History})
	if err != nil {
		return err
	}
	if err := ctrl.Check(ctx); err != nil {
		return fmt.Errorf("--driver %s does not cover the policy: %w", cfg.Driver, err)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return ctrl.Run(gctx) })
	if cfg.Listen != "" {
		ln, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
		srv := &http.Server{Handler: api.Handler(ctrl), ReadHeaderTimeout: 10 * time.Second}
		fmt.Fprintf(stdout, "autoscaler: serving http://%s/v1/status\n", ln.Addr())
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(gctx), 10*time.Second)
			defer cancel()
			return srv.Shutdown(shutdownCtx)
		})
	}
	log.Info("autoscaler running", "pools", len(pol.Pools), "gateways", pol.Gateway != nil, "interval", pol.Interval.String())
	return g.Wait()
}

// simulateConfig holds the settings of `autoscaler simulate`.
type simulateConfig struct {
	Trace, Policy, Out string
	Seed               uint64
	StartupDelay       time.Duration
	Jitter             float64
	MaxTail            time.Duration
}

func newSimulateCmd(stdout io.Writer) *cobra.Command {
	var cfg simulateConfig
	cmd := &cobra.Command{
		Use:   "simulate --trace FILE --policy FILE [--seed N] [--out DIR]",
		Short: "Replay an arrival trace through the policy and report replicas, queue depth, utilisation and latency",
		Long: `Replays an arrival trace (CSV: time_s,runs,duration_s,slot_type) through the same policy
code the controller runs, against a model of workers (slots per worker from the policy, a
start-up delay, a FIFO queue per slot type, drains that let runs finish), and writes
summary.txt, report.svg, series.csv and decisions.csv into --out. The same trace, policy
and seed always give byte-identical reports.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return simulateCmd(cfg, stdout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Trace, "trace", "", "arrival trace CSV (time_s,runs,duration_s,slot_type)")
	f.StringVar(&cfg.Policy, "policy", "", "scaling policy YAML")
	f.StringVar(&cfg.Out, "out", "autoscaler-report", "directory the report is written to")
	f.Uint64Var(&cfg.Seed, "seed", 1, "seed of the per-run jitter (arrival within its second, duration)")
	f.DurationVar(&cfg.StartupDelay, "startup-delay", simulate.DefaultStartupDelay, "time a new worker takes to take work")
	f.Float64Var(&cfg.Jitter, "jitter", simulate.DefaultJitter, "run durations vary uniformly within ±jitter")
	f.DurationVar(&cfg.MaxTail, "max-tail", simulate.DefaultMaxTail, "longest simulated time after the last arrival")
	_ = cmd.MarkFlagRequired("trace")
	_ = cmd.MarkFlagRequired("policy")
	return cmd
}

func simulateCmd(cfg simulateConfig, stdout io.Writer) error {
	data, err := os.ReadFile(cfg.Policy)
	if err != nil {
		return fmt.Errorf("--policy: %w", err)
	}
	pol, err := policy.Parse(data)
	if err != nil {
		return fmt.Errorf("--policy %s: %w", cfg.Policy, err)
	}
	f, err := os.Open(cfg.Trace)
	if err != nil {
		return fmt.Errorf("--trace: %w", err)
	}
	defer f.Close()
	trace, err := simulate.ParseTrace(f)
	if err != nil {
		return fmt.Errorf("--trace %s: %w", cfg.Trace, err)
	}
	res, err := simulate.Run(pol, trace, simulate.Options{
		Seed: cfg.Seed, StartupDelay: &cfg.StartupDelay, Jitter: &cfg.Jitter, MaxTail: cfg.MaxTail,
	})
	if err != nil {
		return fmt.Errorf("simulating %s: %w", cfg.Trace, err)
	}
	labels := simulate.Labels{Trace: filepath.Base(cfg.Trace), Policy: filepath.Base(cfg.Policy)}
	paths, err := res.WriteReport(cfg.Out, labels)
	if err != nil {
		return err
	}
	fmt.Fprint(stdout, res.Summary(labels))
	fmt.Fprintln(stdout)
	for _, p := range paths {
		fmt.Fprintf(stdout, "wrote %s\n", p)
	}
	return nil
}
