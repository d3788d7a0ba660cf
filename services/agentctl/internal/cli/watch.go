package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

// watchPolicy is how `runs watch` reconnects when its event stream breaks. Zero fields take
// the defaults of orDefaults.
type watchPolicy struct {
	// backoff is the first wait before reconnecting; it doubles up to maxBackoff.
	backoff, maxBackoff time.Duration
	// retries is how many reconnections in a row may fail, with no event between them,
	// before agentctl gives up.
	retries int
}

func (p watchPolicy) orDefaults() watchPolicy {
	if p.backoff <= 0 {
		p.backoff = 250 * time.Millisecond
	}
	if p.maxBackoff <= 0 {
		p.maxBackoff = 5 * time.Second
	}
	if p.retries <= 0 {
		p.retries = 10
	}
	return p
}

// errStreamEnded means that an event stream ended cleanly before the run's terminal event,
// which the server never does on purpose; agentctl reconnects as after a break.
var errStreamEnded = errors.New("the event stream ended before the run did")

func (a *app) newRunsWatchCommand() *cobra.Command {
	var limit time.Duration
	cmd := &cobra.Command{
		Use:   "watch ID [--timeout D]",
		Short: "Follow a run's events live until it ends",
		Long: `Watch streams the run's events (its history first, then live) until the run ends or is
INTERRUPTED, one line per event on stdout: seq, time, type and a summary. With -o json each
line is one RunEvent as a JSON object. When stderr is a terminal, a status line there shows
the run's state, current step, steps done, time since it was created and the last event.

When the stream breaks (the gateway restarts), watch reconnects with a backoff and resumes
after the last event it printed: no event is shown twice or skipped.

Exit codes are those of 'runs wait': 0 SUCCEEDED, 1 FAILED, CANCELLED, TIMED_OUT or still
going after --timeout, 3 INTERRUPTED. Ctrl-C stops watching and leaves the run alone.`,
		Example: `  agentctl runs watch r1
  agentctl runs watch r1 -o json | jq -r 'select(.type == "log") | .data.line'`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := resourceName("runs", "a run id", args[0])
			if err != nil {
				return err
			}
			if limit < 0 {
				return usageErrorf("--timeout must not be negative, got %s", limit)
			}
			c, err := a.runClient()
			if err != nil {
				return err
			}
			return a.watchAndReport(cmd.Context(), c, name, limit)
		},
	}
	cmd.Flags().DurationVar(&limit, "timeout", 0, "how long to watch at most (0 = until the run ends)")
	return cmd
}

// watchAndReport follows the run's events (at most limit; 0 = no limit), then reports how it
// stopped like waitAndReport does.
func (a *app) watchAndReport(ctx context.Context, c agentserverv1.RunServiceClient, name string, limit time.Duration) error {
	run, err := a.watchRun(ctx, c, name, limit)
	if err != nil {
		if isCancelled(ctx, err) {
			fmt.Fprintf(a.env.Stderr, "Stopped watching; %s goes on. Check it with `agentctl runs get %s`.\n", name, shortName(name))
		}
		return err
	}
	return a.reportOutcome(run, name, limit, true)
}

// watcher follows the event stream of one run across reconnections.
type watcher struct {
	a    *app
	c    agentserverv1.RunServiceClient
	name string
	disp *watchDisplay
	// after is the seq of the last event shown: a new stream starts after it, and anything at
	// or before it is never shown again.
	after int64
	// terminal is set once the run's terminal event has been shown; the server ends the
	// stream after it, and a stream opened after it would never end.
	terminal bool
}

// watchRun shows the run's events until it stops, then returns the run as the server has it.
// When limit (0 = none) passes first, it returns the run as it is then.
func (a *app) watchRun(ctx context.Context, c agentserverv1.RunServiceClient, name string, limit time.Duration) (*agentserverv1.Run, error) {
	w := &watcher{a: a, c: c, name: name, disp: a.newWatchDisplay(name)}
	defer w.disp.close()

	watchCtx, cancel := ctx, context.CancelFunc(func() {})
	if limit > 0 {
		watchCtx, cancel = context.WithTimeout(ctx, limit)
	}
	defer cancel()

	pol := a.watch.orDefaults()
	backoff, failures := pol.backoff, 0
	for {
		run, progressed, err := w.follow(ctx, watchCtx)
		switch {
		case err == nil:
			return run, nil
		case ctx.Err() != nil:
			return nil, err
		case watchCtx.Err() != nil, limit > 0 && status.Code(err) == codes.DeadlineExceeded:
			// --timeout passed. The server can end the stream at that deadline (it gets it
			// with the call) a moment before the local timer marks watchCtx done.
			return w.getRun(ctx)
		case w.terminal:
			// The run is over and shown; only fetching it failed. (Never reconnect now: a
			// stream opened after the terminal event would not end.)
			return nil, err
		case !errors.Is(err, errStreamEnded) && status.Code(err) != codes.Unavailable:
			return nil, err
		}
		if progressed {
			backoff, failures = pol.backoff, 0
		}
		failures++
		if failures > pol.retries {
			w.disp.note(a.env.Stderr, fmt.Sprintf("%s; giving up after %d tries", streamBreak(err), failures))
			return nil, fmt.Errorf("watching %s: %w", name, err)
		}
		// Jitter spreads the reconnections of many watchers after a gateway restart.
		delay := backoff/2 + rand.N(backoff/2+1)
		w.disp.note(a.env.Stderr, fmt.Sprintf("%s; resuming after event %d in %s", streamBreak(err), w.after, delay.Round(time.Millisecond)))
		if err := sleep(watchCtx, delay); err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			return w.getRun(ctx)
		}
		backoff = min(2*backoff, pol.maxBackoff)
	}
}

// streamBreak says in words why a stream stopped.
func streamBreak(err error) string {
	if errors.Is(err, errStreamEnded) {
		return "The event stream ended early"
	}
	st, _ := status.FromError(err)
	return fmt.Sprintf("The event stream broke (%s: %s)", st.Code(), st.Message())
}

// follow reads one event stream, starting after the last event shown. It returns the run
// once it stopped: after the stream ended that carried the terminal event, or at an
// INTERRUPTED event that is still the run's state. progressed says whether it showed any new
// event, so that a stream which keeps breaking after progress is not given up on.
func (w *watcher) follow(ctx, watchCtx context.Context) (run *agentserverv1.Run, progressed bool, err error) {
	streamCtx, cancel := context.WithCancel(watchCtx)
	defer cancel()
	stream, err := w.c.StreamRunEvents(streamCtx, &agentserverv1.StreamRunEventsRequest{Name: w.name, AfterSeq: w.after})
	if err != nil {
		return nil, false, err
	}
	for {
		ev, err := stream.Recv()
		switch {
		case err != nil && w.terminal:
			// However the stream ended, there is nothing more to show.
			run, err := w.getRun(ctx)
			return run, progressed, err
		case errors.Is(err, io.EOF):
			return nil, progressed, errStreamEnded
		case err != nil:
			return nil, progressed, err
		case ev.GetSeq() <= w.after:
			continue // a server replaying what was shown already; never show it twice
		}
		b, err := w.a.eventBytes(ev)
		if err != nil {
			return nil, progressed, err
		}
		if err := w.disp.print(w.a.env.Stdout, b, ev); err != nil {
			return nil, progressed, err
		}
		w.after, progressed = ev.GetSeq(), true

		switch s := stateOf(ev); {
		case ended(s):
			w.terminal = true
		case s == agentserverv1.Run_INTERRUPTED:
			// The stream goes on through an interruption (the run may be resumed); stop like
			// 'runs wait' does if the run still waits for this input, not when this event is
			// only history.
			run, err := w.getRun(ctx)
			if err != nil {
				return nil, progressed, err
			}
			if run.GetState() == agentserverv1.Run_INTERRUPTED && sameInterruption(run, ev) {
				return run, progressed, nil
			}
		}
	}
}

// sameInterruption reports whether an INTERRUPTED event records the interruption run is in
// now: its step and prompt match what the event says, where it says it.
func sameInterruption(run *agentserverv1.Run, ev *agentserverv1.RunEvent) bool {
	data := ev.GetData().GetFields()
	if step, ok := data["step"]; ok && step.GetStringValue() != run.GetStep() {
		return false
	}
	if prompt, ok := data["prompt"]; ok && !proto.Equal(prompt, run.GetPrompt()) {
		return false
	}
	return true
}

func (w *watcher) getRun(ctx context.Context) (*agentserverv1.Run, error) {
	ctx, cancel := w.a.callContext(ctx)
	defer cancel()
	return w.c.GetRun(ctx, &agentserverv1.GetRunRequest{Name: w.name})
}

// eventBytes renders ev for stdout: a line of text, or a line of JSON with -o json.
func (a *app) eventBytes(ev *agentserverv1.RunEvent) ([]byte, error) {
	if a.jsonOutput() {
		return eventJSONLine(ev)
	}
	return []byte(eventLine(ev) + "\n"), nil
}
