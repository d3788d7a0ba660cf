package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/structpb"

	gatewayv1 "github.com/agentserver/agentserver/gen/agentserver/gateway/v1"
	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/config"
)

// Workloads of agentctl bench.
const (
	benchModeRate        = "rate"
	benchModeConcurrency = "concurrency"
	benchModeBurndown    = "burndown"
)

// maxBatch is the most runs BatchCreateRuns takes in one call.
const maxBatch = 1000

// benchOptions are the flags of agentctl bench.
type benchOptions struct {
	assistant   string
	flow        string
	assistantID string
	slotType    string
	input       string
	pids        string

	rate             float64
	duration         time.Duration
	concurrency      int
	burndown         int
	batchSize        int
	batchConcurrency int
	maxRuns          int
	maxInflight      int
	threads          int
	drainTimeout     time.Duration
	hold             bool
	json             bool
}

func (o *benchOptions) mode(cmd *cobra.Command) (string, error) {
	var modes []string
	if changed(cmd, "rate") {
		modes = append(modes, benchModeRate)
	}
	if changed(cmd, "concurrency") {
		modes = append(modes, benchModeConcurrency)
	}
	if changed(cmd, "burndown") {
		modes = append(modes, benchModeBurndown)
	}
	if len(modes) != 1 {
		return "", usageErrorf("give exactly one of --rate, --concurrency or --burndown")
	}
	switch {
	case changed(cmd, "assistant") == changed(cmd, "flow"):
		return "", usageErrorf("give --assistant (an existing no-op assistant) or --flow (create one), not both or neither")
	case o.rate <= 0 && modes[0] == benchModeRate:
		return "", usageErrorf("--rate must be positive, got %g", o.rate)
	case o.concurrency <= 0 && modes[0] == benchModeConcurrency:
		return "", usageErrorf("--concurrency must be positive, got %d", o.concurrency)
	case o.burndown <= 0 && modes[0] == benchModeBurndown:
		return "", usageErrorf("--burndown must be positive, got %d", o.burndown)
	case o.duration <= 0:
		return "", usageErrorf("--duration must be positive, got %s", o.duration)
	case o.batchSize <= 0 || o.batchSize > maxBatch:
		return "", usageErrorf("--batch-size must be between 1 and %d, got %d", maxBatch, o.batchSize)
	case o.batchConcurrency <= 0:
		return "", usageErrorf("--batch-concurrency must be positive, got %d", o.batchConcurrency)
	case o.maxRuns <= 0:
		return "", usageErrorf("--max-runs must be positive, got %d", o.maxRuns)
	case o.maxInflight <= 0:
		return "", usageErrorf("--max-inflight must be positive, got %d", o.maxInflight)
	case o.threads < 0:
		return "", usageErrorf("--threads must not be negative, got %d", o.threads)
	case o.drainTimeout <= 0:
		return "", usageErrorf("--drain-timeout must be positive, got %s", o.drainTimeout)
	}
	return modes[0], nil
}

func (a *app) newBenchCommand() *cobra.Command {
	o := benchOptions{
		slotType: "cpu", input: "{}", duration: 10 * time.Second, batchSize: maxBatch, batchConcurrency: 1,
		maxRuns: 1_000_000, maxInflight: 10_000, drainTimeout: 5 * time.Minute, hold: true,
	}
	cmd := &cobra.Command{
		Use:   "bench (--rate R | --concurrency C | --burndown N) (--flow FILE | --assistant ID) [flags]",
		Short: "Measure throughput and latency of no-op runs through the public API",
		Long: `Bench drives agentserver through its public gRPC API with runs of a no-op assistant and
reports throughput, enqueue→start and enqueue→complete latency (p50/p95/p99/max), errors and
the CPU time of the server's processes.

Workloads (exactly one):
  --rate R --duration D          open loop: one CreateRun every 1/R s, on schedule whether or
                                 not earlier calls have answered
  --concurrency C --duration D   closed loop: C creators calling CreateRun back to back
  --burndown N                   create N runs with BatchCreateRuns (batches of --batch-size),
                                 then measure until all have finished. The assistant is held
                                 at a concurrency limit of 1 (created with it, or, with
                                 --assistant, given it) until every run is queued, then
                                 released to its own limit (--hold), so the burn-down starts
                                 from a full queue; throughput is then counted from that moment.
                                 An existing assistant whose replicas are warm (--assistant)
                                 measures no executor start-up.

Latencies come from the runs' own create_time, start_time and end_time (the server's clock),
collected with ListRuns after the runs have finished; while they run, one WaitRun at a time
follows the newest run, at most one run every 100 ms, so watching costs the server almost
nothing. Throughput is the runs that SUCCEEDED divided by the time from the first
create_time (burn-down: the release) to the last end_time. Beside the create calls' own
latency ("create call", measured here) the report gives the answering gateway's time in its
handlers ("gateway handler", from its GatewayStatsService: the unary calls of its last
minute, at most 65,536, nearly all of them this bench's creates under load; not reported
for a burn-down): the difference is the transport both ways and this client.

With --threads N every run is created on one of N new threads in turn (multitask
"enqueue": a thread's runs run one at a time, in order), as sessions' turns are.

CPU time is read from /proc/<pid>/stat before and after the measured window: of the processes
given with --pids, else of every process named agentserver or postgres (with the postgres
backends and the server's executor processes), and of agentctl itself.`,
		Example: `  agentctl bench --flow examples/noop/flow.yaml --concurrency 8 --duration 30s
  agentctl bench --assistant bench-noop --rate 500 --duration 20s --json
  agentctl bench --flow flow.yaml --burndown 100000 --pids agentserver=4242,postgres=4100
  agentctl bench --assistant bench-noop --concurrency 8 --threads 500 --duration 20s`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The load client shares the machine with what it measures: no retry support
			// on its connection and the services' garbage-collector target (GOGC=400
			// unless GOGC is set) cut its CPU per call against the server's by ~8 %
			// (bench/ab.sh, 5 interleaved pairs: docs/performance-history.md,
			// twenty-second pass).
			a.noRetry = true
			config.ApplyGCPercent()
			mode, err := o.mode(cmd)
			if err != nil {
				return err
			}
			roots, err := parsePIDs(o.pids)
			if err != nil {
				return err
			}
			input, err := parseObject("--input", []byte(o.input))
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				o.json = true
			}
			b := &benchRun{a: a, opts: o, mode: mode, input: input, errKinds: map[string]int{},
				sampler: &cpuSampler{procRoot: "/proc", roots: roots, self: os.Getpid()}}
			return b.run(cmd.Context(), cmd)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.assistant, "assistant", "", "existing assistant to run (ID or assistants/ID); its executor should do nothing")
	fs.StringVar(&o.flow, "flow", "", "flow file of a no-op executor: a new assistant is created from it (- reads stdin)")
	fs.StringVar(&o.assistantID, "assistant-id", "", "id of the assistant created from --flow (default: bench-<random>)")
	fs.StringVar(&o.slotType, "slot-type", o.slotType, "slot type of the assistant created from --flow")
	fs.StringVar(&o.input, "input", o.input, "input of every run, a JSON object")
	fs.Float64Var(&o.rate, "rate", 0, "offered rate in runs per second (open loop)")
	fs.IntVar(&o.concurrency, "concurrency", 0, "concurrent creators, each calling CreateRun back to back")
	fs.IntVar(&o.burndown, "burndown", 0, "create this many runs with BatchCreateRuns, then measure until all finish")
	fs.DurationVar(&o.duration, "duration", o.duration, "how long --rate and --concurrency create runs")
	fs.IntVar(&o.batchSize, "batch-size", o.batchSize, "runs per BatchCreateRuns call of --burndown (at most 1000)")
	fs.IntVar(&o.batchConcurrency, "batch-concurrency", o.batchConcurrency, "concurrent BatchCreateRuns calls of --burndown")
	fs.BoolVar(&o.hold, "hold", o.hold, "--burndown: hold the runs (concurrency limit 1) until all are queued, then give the assistant back its own limit")
	fs.IntVar(&o.maxRuns, "max-runs", o.maxRuns, "stop creating after this many runs whatever --duration says")
	fs.IntVar(&o.maxInflight, "max-inflight", o.maxInflight, "--rate: most CreateRun calls outstanding; a send due beyond it is counted as an error")
	fs.IntVar(&o.threads, "threads", 0, "create every run on one of this many new threads in turn (multitask enqueue); 0: no threads")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", o.drainTimeout, "how long to wait for the runs to finish once created")
	fs.StringVar(&o.pids, "pids", "", "processes to report CPU time of, name=pid,... (default: processes named agentserver and postgres)")
	fs.BoolVar(&o.json, "json", false, "print the report as one JSON object (same as -o json)")
	return cmd
}

// createdRun is a run the server accepted, as its create call answered.
type createdRun struct {
	name   string
	create time.Time
}

// benchRun is one agentctl bench invocation.
type benchRun struct {
	a       *app
	opts    benchOptions
	mode    string
	input   *structpb.Struct
	sampler *cpuSampler

	runs       agentserverv1.RunServiceClient
	assistants agentserverv1.AssistantServiceClient
	assistant  string
	// threads are the names of the --threads threads; nextRun picks one per run in turn.
	threads []string
	nextRun atomic.Int64
	held    bool // the assistant's concurrency limit holds the runs until release
	// ownLimit is the concurrency limit of an existing assistant (--assistant) before it
	// was held, restored by release.
	ownLimit int32

	mu         sync.Mutex
	created    []createdRun
	callMS     []float64
	errKinds   map[string]int
	errors     int
	firstCall  time.Time
	lastAnswer time.Time

	// finished counts runs known to have finished, for the progress display: every run
	// created before the newest one seen settled.
	finished atomic.Int64
}

func (b *benchRun) addError(kind string, n int) {
	b.mu.Lock()
	b.errKinds[kind] += n
	b.errors += n
	b.mu.Unlock()
}

// callError names a failed call by method and status code, e.g. "CreateRun: Unavailable".
func callError(method string, err error) string {
	if st, ok := status.FromError(err); ok {
		return method + ": " + st.Code().String()
	}
	return method + ": " + err.Error()
}

// record notes the answer of one create call that began at began and asked for n runs.
func (b *benchRun) record(method string, began time.Time, runs []*agentserverv1.Run, err error, n int) {
	answered := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.firstCall.IsZero() || began.Before(b.firstCall) {
		b.firstCall = began
	}
	b.lastAnswer = maxTime(b.lastAnswer, answered)
	b.callMS = append(b.callMS, ms(answered.Sub(began)))
	if err != nil {
		b.errKinds[callError(method, err)] += n
		b.errors += n
		return
	}
	for _, r := range runs {
		b.created = append(b.created, createdRun{name: r.GetName(), create: r.GetCreateTime().AsTime()})
	}
}

func (b *benchRun) createdCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.created)
}

// newest returns the most recently answered run and how many runs were answered by then.
func (b *benchRun) newest() (string, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.created) == 0 {
		return "", 0
	}
	return b.created[len(b.created)-1].name, len(b.created)
}

func (b *benchRun) run(ctx context.Context, cmd *cobra.Command) error {
	var err error
	if b.runs, err = b.a.runClient(); err != nil {
		return err
	}
	if b.assistants, err = b.a.assistantClient(); err != nil {
		return err
	}
	if err := b.setupAssistant(ctx); err != nil {
		return err
	}
	if err := b.setupThreads(ctx); err != nil {
		return err
	}
	defer func() {
		// A burn-down that failed before its release must not leave the assistant held.
		if b.held {
			if _, err := b.setLimit(context.WithoutCancel(ctx), b.ownLimit); err != nil {
				fmt.Fprintf(b.a.env.Stderr, "warning: %s is still held at a concurrency limit of 1 (%v); set it back with: agentctl assistants update %s --concurrency-limit %d\n",
					b.assistant, err, strings.TrimPrefix(b.assistant, "assistants/"), b.ownLimit)
			}
		}
	}()
	stopProgress := b.showProgress()
	defer stopProgress()

	before := b.sampler.read()
	creating := time.Now()
	trackCtx, stopTracking := context.WithCancel(ctx)
	defer stopTracking()
	createsDone := make(chan struct{})
	tracked := make(chan struct{})
	go func() { defer close(tracked); b.track(trackCtx, createsDone) }()

	var release time.Time
	switch b.mode {
	case benchModeRate:
		err = b.runRate(ctx)
	case benchModeConcurrency:
		err = b.runConcurrency(ctx)
	case benchModeBurndown:
		err = b.runBurndown(ctx)
		if err == nil && b.held {
			if release, err = b.release(ctx); err == nil {
				before = b.sampler.read()
				creating = time.Now()
			}
		}
	}
	close(createsDone)
	if err != nil {
		return err
	}
	// Wait until the newest run has settled, then take the CPU sample before listing the
	// runs, which costs the server more than the watching did.
	select {
	case <-tracked:
	case <-time.After(b.opts.drainTimeout):
		stopTracking()
		<-tracked
	case <-ctx.Done():
		return ctx.Err()
	}
	wall := time.Since(creating)
	after := b.sampler.read()
	var gateway *GatewayLatency
	if b.mode != benchModeBurndown {
		// A burn-down's hundred-odd batch calls would be a small part of the gateway's
		// window; one CreateRun per run under load is nearly all of it.
		gateway = b.gatewayLatency(ctx)
	}
	stopProgress()

	runs, err := b.collect(ctx, time.Now().Add(b.opts.drainTimeout))
	if err != nil {
		return err
	}
	report := b.report(runs, release)
	report.GatewayMS = gateway
	if before.groupsErr == nil && after.groupsErr == nil {
		report.CPU = cpuUsage(before.groups, after.groups, wall.Seconds(), report.Completed)
		if before.machineErr == nil && after.machineErr == nil {
			report.Machine = machineUsage(before.machine, after.machine, wall.Seconds(), report.Completed)
		}
	} else if !b.opts.json {
		fmt.Fprintf(b.a.env.Stderr, "note: %v\n", errNoProc)
	}
	if b.opts.json {
		out, err := json.MarshalIndent(report, "", "  ")
		if err != nil {
			return err
		}
		if _, err := b.a.env.Stdout.Write(append(out, '\n')); err != nil {
			return err
		}
	} else if err := report.printText(b.a.env.Stdout); err != nil {
		return err
	}
	if report.Errors > 0 {
		return &exitError{code: ExitFailure, msg: fmt.Sprintf("bench: %d errors (see error_kinds)", report.Errors)}
	}
	return nil
}

// setupAssistant checks --assistant or creates the assistant of --flow.
func (b *benchRun) setupAssistant(ctx context.Context) error {
	if b.opts.assistant != "" {
		name, err := resourceName("assistants", "an assistant id", b.opts.assistant)
		if err != nil {
			return err
		}
		cctx, cancel := b.a.callContext(ctx)
		defer cancel()
		asst, err := b.assistants.GetAssistant(cctx, &agentserverv1.GetAssistantRequest{Name: name})
		if err != nil {
			return err
		}
		b.assistant = asst.GetName()
		if b.mode == benchModeBurndown && b.opts.hold {
			if _, err := b.setLimit(ctx, 1); err != nil {
				return fmt.Errorf("holding the runs of %s (concurrency limit 1): %w", b.assistant, err)
			}
			b.held, b.ownLimit = true, asst.GetConcurrencyLimit()
		}
		return nil
	}
	flowText, err := b.a.readFileArg("--flow", b.opts.flow)
	if err != nil {
		return err
	}
	id := b.opts.assistantID
	if id == "" {
		var suffix [4]byte
		_, _ = rand.Read(suffix[:])
		id = "bench-" + hex.EncodeToString(suffix[:])
	}
	asst := &agentserverv1.Assistant{
		DisplayName: "agentctl bench", Flow: string(flowText), SlotType: b.opts.slotType,
		Timeout: durationpb.New(time.Minute),
	}
	if b.mode == benchModeBurndown && b.opts.hold {
		asst.ConcurrencyLimit = 1
		b.held = true
	}
	cctx, cancel := b.a.callContext(ctx)
	defer cancel()
	created, err := b.assistants.CreateAssistant(cctx, &agentserverv1.CreateAssistantRequest{AssistantId: id, Assistant: asst})
	if err != nil {
		return err
	}
	b.assistant = created.GetName()
	if !b.opts.json {
		fmt.Fprintf(b.a.env.Stderr, "created %s\n", b.assistant)
	}
	return nil
}

// setupThreads creates the --threads threads, 16 at a time.
func (b *benchRun) setupThreads(ctx context.Context) error {
	if b.opts.threads == 0 {
		return nil
	}
	client, err := b.a.threadClient()
	if err != nil {
		return err
	}
	b.threads = make([]string, b.opts.threads)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range b.threads {
		g.Go(func() error {
			cctx, cancel := b.a.callContext(gctx)
			defer cancel()
			t, err := client.CreateThread(cctx, &agentserverv1.CreateThreadRequest{Thread: &agentserverv1.Thread{}})
			if err != nil {
				return fmt.Errorf("creating thread %d of --threads %d: %w", i+1, b.opts.threads, err)
			}
			b.threads[i] = t.GetName()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if !b.opts.json {
		fmt.Fprintf(b.a.env.Stderr, "created %d threads\n", len(b.threads))
	}
	return nil
}

// newRun is the next run to create: of the assistant, on the next thread in turn with
// --threads.
func (b *benchRun) newRun() *agentserverv1.Run {
	r := &agentserverv1.Run{Assistant: b.assistant, Input: b.input}
	if len(b.threads) > 0 {
		r.Thread = b.threads[int((b.nextRun.Add(1)-1)%int64(len(b.threads)))]
		r.Multitask = "enqueue"
	}
	return r
}

// createOne enqueues one run with CreateRun.
func (b *benchRun) createOne(ctx context.Context) {
	began := time.Now()
	cctx, cancel := b.a.callContext(ctx)
	r, err := b.runs.CreateRun(cctx, &agentserverv1.CreateRunRequest{Run: b.newRun()})
	cancel()
	if ctx.Err() != nil {
		return
	}
	b.record("CreateRun", began, []*agentserverv1.Run{r}, err, 1)
}

// runRate sends one CreateRun every 1/rate seconds for the duration: the schedule is kept
// by the clock, not by the answers (open loop), so a slow server sees its queue grow.
func (b *benchRun) runRate(ctx context.Context) error {
	start := time.Now()
	inflight := make(chan struct{}, b.opts.maxInflight)
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range b.opts.maxRuns {
		offset := time.Duration(float64(i) / b.opts.rate * float64(time.Second))
		if offset >= b.opts.duration {
			break
		}
		if err := sleep(ctx, time.Until(start.Add(offset))); err != nil {
			return err
		}
		select {
		case inflight <- struct{}{}:
		default:
			b.addError("client: --max-inflight calls outstanding, send skipped", 1)
			continue
		}
		wg.Go(func() {
			defer func() { <-inflight }()
			b.createOne(ctx)
		})
	}
	return ctx.Err()
}

// runConcurrency runs C creators back to back for the duration (closed loop).
func (b *benchRun) runConcurrency(ctx context.Context) error {
	start := time.Now()
	var issued atomic.Int64
	var wg sync.WaitGroup
	for range b.opts.concurrency {
		wg.Go(func() {
			for ctx.Err() == nil && time.Since(start) < b.opts.duration && issued.Add(1) <= int64(b.opts.maxRuns) {
				b.createOne(ctx)
			}
		})
	}
	wg.Wait()
	return ctx.Err()
}

// runBurndown creates the runs with BatchCreateRuns.
func (b *benchRun) runBurndown(ctx context.Context) error {
	sizes := make(chan int)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(sizes)
		for left := b.opts.burndown; left > 0; left -= b.opts.batchSize {
			select {
			case sizes <- min(left, b.opts.batchSize):
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range b.opts.batchConcurrency {
		g.Go(func() error {
			for n := range sizes {
				reqs := make([]*agentserverv1.CreateRunRequest, n)
				for i := range reqs {
					reqs[i] = &agentserverv1.CreateRunRequest{Run: b.newRun()}
				}
				began := time.Now()
				cctx, cancel := b.a.callContext(gctx)
				resp, err := b.runs.BatchCreateRuns(cctx, &agentserverv1.BatchCreateRunsRequest{Requests: reqs})
				cancel()
				if gctx.Err() != nil {
					return gctx.Err()
				}
				b.record("BatchCreateRuns", began, resp.GetRuns(), err, n)
			}
			return nil
		})
	}
	return g.Wait()
}

// release gives the assistant back its own concurrency limit (none for one the bench
// created), releasing the burn-down's held runs, and returns the server's time of the
// change, from which the burn-down is measured.
func (b *benchRun) release(ctx context.Context) (time.Time, error) {
	asst, err := b.setLimit(ctx, b.ownLimit)
	if err != nil {
		return time.Time{}, fmt.Errorf("releasing the queued runs (setting the concurrency limit of %s back to %d): %w", b.assistant, b.ownLimit, err)
	}
	b.held = false
	return asst.GetUpdateTime().AsTime(), nil
}

// setLimit sets the assistant's concurrency limit.
func (b *benchRun) setLimit(ctx context.Context, limit int32) (*agentserverv1.Assistant, error) {
	cctx, cancel := b.a.callContext(ctx)
	defer cancel()
	return b.assistants.UpdateAssistant(cctx, &agentserverv1.UpdateAssistantRequest{
		Assistant:  &agentserverv1.Assistant{Name: b.assistant, ConcurrencyLimit: limit},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"concurrency_limit"}},
	})
}

// waitChunk is how long one WaitRun call of the tracker may block on the server.
const benchWaitChunk = 2 * time.Second

// settledState reports whether a run will change no more without a client's action.
func settledState(s agentserverv1.Run_State) bool {
	return stopped(s) || s == agentserverv1.Run_INTERRUPTED
}

// track follows the newest created run with one WaitRun at a time until the creates are
// done and the newest run has settled. Runs complete roughly in creation order, so this
// finds the end of the workload while adding at most a few reads per second.
func (b *benchRun) track(ctx context.Context, createsDone <-chan struct{}) {
	settled := ""
	for ctx.Err() == nil {
		name, n := b.newest()
		if name == settled {
			select {
			case <-createsDone:
				// Read again: a create may have answered just before they ended.
				if latest, _ := b.newest(); latest == settled {
					return
				}
				continue
			default:
			}
			if sleep(ctx, 20*time.Millisecond) != nil {
				return
			}
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, benchWaitChunk+b.a.cfg.Timeout)
		r, err := b.runs.WaitRun(cctx, &agentserverv1.WaitRunRequest{Name: name, Timeout: durationpb.New(benchWaitChunk)})
		cancel()
		if err != nil {
			// Watching is best effort: the figures come from ListRuns afterwards, which
			// also catches runs this missed.
			if sleep(ctx, 100*time.Millisecond) != nil {
				return
			}
			continue
		}
		if settledState(r.GetState()) {
			settled = name
			b.finished.Store(int64(n))
			// The next newest run is followed a moment later: under load a new run is
			// created every fraction of a millisecond, and following one after another
			// read the server's database a few hundred times a second (WaitRun polls
			// from 5 ms), a load the system under test should not carry.
			if sleep(ctx, benchTrackEvery) != nil {
				return
			}
		}
	}
}

// benchTrackEvery is the least time between two runs track follows: the progress display's
// "finished" count moves that often.
const benchTrackEvery = 100 * time.Millisecond

// collect reads every created run back with ListRuns (newest first, stopping at the first
// run older than ours) and waits for those not yet settled, up to deadline.
func (b *benchRun) collect(ctx context.Context, deadline time.Time) (map[string]*agentserverv1.Run, error) {
	b.mu.Lock()
	want := make(map[string]bool, len(b.created))
	var oldest time.Time
	for _, c := range b.created {
		want[c.name] = true
		if oldest.IsZero() || c.create.Before(oldest) {
			oldest = c.create
		}
	}
	b.mu.Unlock()
	got := make(map[string]*agentserverv1.Run, len(want))
	token := ""
	for len(want) > 0 {
		cctx, cancel := b.a.callContext(ctx)
		resp, err := b.runs.ListRuns(cctx, &agentserverv1.ListRunsRequest{PageSize: maxBatch, PageToken: token, Assistant: b.assistant})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("listing the runs of %s: %w", b.assistant, err)
		}
		older := false
		for _, r := range resp.GetRuns() {
			if want[r.GetName()] {
				got[r.GetName()] = r
			}
			older = older || r.GetCreateTime().AsTime().Before(oldest)
		}
		token = resp.GetNextPageToken()
		if len(got) == len(want) || token == "" || older {
			break
		}
	}
	var pending []string
	for name := range want {
		if r, ok := got[name]; !ok || !settledState(r.GetState()) {
			pending = append(pending, name)
		}
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, name := range pending {
		g.Go(func() error {
			for time.Now().Before(deadline) {
				chunk := min(benchWaitChunk, max(time.Until(deadline), time.Millisecond))
				cctx, cancel := context.WithTimeout(gctx, chunk+b.a.cfg.Timeout)
				r, err := b.runs.WaitRun(cctx, &agentserverv1.WaitRunRequest{Name: name, Timeout: durationpb.New(chunk)})
				cancel()
				if gctx.Err() != nil {
					return gctx.Err()
				}
				if err != nil {
					if sleep(gctx, 100*time.Millisecond) != nil {
						return gctx.Err()
					}
					continue
				}
				mu.Lock()
				got[name] = r
				mu.Unlock()
				if settledState(r.GetState()) {
					return nil
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return got, nil
}

// report computes the figures of the collected runs; release is the start of a held
// burn-down's window (zero otherwise).
func (b *benchRun) report(got map[string]*agentserverv1.Run, release time.Time) *BenchReport {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := &BenchReport{
		Mode: b.mode, Assistant: b.assistant, Threads: len(b.threads), Created: len(b.created),
		CreateCallMS: summarize(b.callMS), ErrorKinds: b.errKinds,
	}
	switch b.mode {
	case benchModeRate:
		r.OfferedRatePerS, r.DurationS = b.opts.rate, b.opts.duration.Seconds()
	case benchModeConcurrency:
		r.Concurrency, r.DurationS = b.opts.concurrency, b.opts.duration.Seconds()
	case benchModeBurndown:
		r.Concurrency = b.opts.batchConcurrency
	}
	r.CreateRatePerS = rate(len(b.created), b.lastAnswer.Sub(b.firstCall))
	times := make([]runTimes, 0, len(got))
	errs := b.errors
	for _, c := range b.created {
		run, ok := got[c.name]
		if !ok {
			r.ErrorKinds["run not found by ListRuns"]++
			errs++
			continue
		}
		st := run.GetState()
		switch {
		case st == agentserverv1.Run_SUCCEEDED:
		case settledState(st):
			r.ErrorKinds["run ended "+st.String()]++
			errs++
		default:
			r.ErrorKinds["run not finished in time ("+st.String()+")"]++
			errs++
		}
		t := runTimes{create: run.GetCreateTime().AsTime(), succeeded: st == agentserverv1.Run_SUCCEEDED}
		if run.GetStartTime() != nil {
			t.start = run.GetStartTime().AsTime()
		}
		if run.GetEndTime() != nil {
			t.end = run.GetEndTime().AsTime()
		}
		times = append(times, t)
	}
	var window time.Duration
	r.Completed, window, r.EnqueueToStartMS, r.EnqueueToCompleteMS = latencies(times, release)
	r.WindowS = window.Seconds()
	r.ThroughputPerS = rate(r.Completed, window)
	r.Errors = errs
	return r
}

// showProgress prints a status line on stderr twice a second while the bench runs, when
// stderr is a terminal; the returned function clears it (and may be called twice).
func (b *benchRun) showProgress() func() {
	if !b.a.env.IsTerminal(b.a.env.Stderr) {
		return func() {}
	}
	w := b.a.env.Stderr
	start := time.Now()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				fmt.Fprint(w, "\r\033[K")
				return
			case <-t.C:
			}
			elapsed := time.Since(start)
			n := b.createdCount()
			b.mu.Lock()
			errs := b.errors
			b.mu.Unlock()
			line := fmt.Sprintf("%s  %s  created %d (%.0f/s)  finished ≥%d  errors %d",
				elapsed.Round(100*time.Millisecond), b.mode, n, rate(n, elapsed), b.finished.Load(), errs)
			fmt.Fprint(w, "\r\033[K"+strings.TrimSpace(line))
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(stop); <-done }) }
}

// gatewayLatency reads the answering gateway's latency of its own unary calls; nil when it
// does not answer (an older gateway, or one behind a proxy that does not pass the internal
// service): the report then goes without it.
func (b *benchRun) gatewayLatency(ctx context.Context) *GatewayLatency {
	stats, err := client(b.a, gatewayv1.NewGatewayStatsServiceClient)
	if err != nil {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := stats.GetLatency(cctx, &gatewayv1.GetLatencyRequest{})
	if err != nil || resp.GetCount() == 0 {
		return nil
	}
	return &GatewayLatency{
		WindowS: resp.GetWindow().AsDuration().Seconds(),
		P50:     ms(resp.GetP50().AsDuration()),
		P95:     ms(resp.GetP95().AsDuration()),
		P99:     ms(resp.GetP99().AsDuration()),
		N:       resp.GetCount(),
	}
}
