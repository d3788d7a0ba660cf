package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

func (a *app) newRunsCommand() *cobra.Command {
	cmd := newGroup("runs", "Create, list, wait for, watch, resume and cancel runs", "run")
	cmd.AddCommand(
		a.newRunsCreateCommand(),
		a.newRunsGetCommand(),
		a.newRunsListCommand(),
		a.newRunsCancelCommand(),
		a.newRunsWaitCommand(),
		a.newRunsWatchCommand(),
		a.newRunsEventsCommand(),
		a.newRunsResumeCommand(),
	)
	return cmd
}

func (a *app) newRunsCreateCommand() *cobra.Command {
	var (
		assistant, input, inputFile, requestID string
		thread, multitask                      string
		priority                               int32
		timeout                                time.Duration
		wait                                   bool
	)
	cmd := &cobra.Command{
		Use:   "create --assistant ID [--input JSON | --input-file FILE] [flags]",
		Short: "Enqueue a run of an assistant; with --wait, wait for its result",
		Long: `Create enqueues a run and returns at once with state QUEUED. With --wait it then waits
until the run ends (or is INTERRUPTED), printing its output and exiting like 'runs wait'.

With --thread the run starts from the thread's state and writes its output back to it.
--multitask says what happens when the thread already has an active run: reject (the
server's default: this create fails), enqueue (this run waits for it) or interrupt (it is
cancelled).`,
		Example: `  agentctl runs create --assistant summarizer --input '{"text":"..."}' --wait
  agentctl runs create --assistant summarizer --input-file input.json --priority 10 --request-id job-42
  agentctl runs create --assistant chat --thread t1 --multitask enqueue --input '{"message":"hi"}'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !changed(cmd, "assistant") {
				return usageErrorf("--assistant is required")
			}
			asstName, err := resourceName("assistants", "an assistant id", assistant)
			if err != nil {
				return err
			}
			run := &agentserverv1.Run{Assistant: asstName}
			switch {
			case changed(cmd, "input") && changed(cmd, "input-file"):
				return usageErrorf("give --input or --input-file, not both")
			case changed(cmd, "input"):
				if run.Input, err = parseObject("--input", []byte(input)); err != nil {
					return err
				}
			case changed(cmd, "input-file"):
				b, err := a.readFileArg("--input-file", inputFile)
				if err != nil {
					return err
				}
				if run.Input, err = parseObject("--input-file", b); err != nil {
					return err
				}
			}
			if changed(cmd, "thread") {
				if run.Thread, err = resourceName("threads", "a thread id", thread); err != nil {
					return err
				}
			}
			if changed(cmd, "multitask") {
				if !changed(cmd, "thread") {
					return usageErrorf("--multitask needs --thread")
				}
				if run.Multitask, err = parseMultitask(multitask); err != nil {
					return err
				}
			}
			if changed(cmd, "priority") {
				run.Priority = proto.Int32(priority)
			}
			if changed(cmd, "timeout") {
				if timeout <= 0 {
					return usageErrorf("--timeout must be positive, got %s", timeout)
				}
				run.Timeout = durationpb.New(timeout)
			}
			c, err := a.runClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			created, err := c.CreateRun(ctx, &agentserverv1.CreateRunRequest{Run: run, RequestId: requestID})
			cancel()
			if err != nil {
				return err
			}
			return a.reportStarted(cmd.Context(), c, "created", created, wait)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&assistant, "assistant", "", "assistant to run: ID or assistants/ID (required)")
	fs.StringVar(&input, "input", "", `initial state, a JSON object, e.g. '{"text":"hello"}'`)
	fs.StringVar(&inputFile, "input-file", "", "file with the initial state as a JSON object (- reads stdin)")
	fs.StringVar(&thread, "thread", "", "thread to run on: ID or threads/ID")
	fs.StringVar(&multitask, "multitask", "", "when the thread has an active run: reject, enqueue or interrupt (needs --thread)")
	fs.Int32Var(&priority, "priority", 0, "priority (higher runs first); unset = the assistant's default")
	fs.DurationVar(&timeout, "timeout", 0, "execution timeout of the run, e.g. 10m; unset = the assistant's default")
	fs.StringVar(&requestID, "request-id", "", "idempotency key: creating again with the same key returns the first run")
	fs.BoolVar(&wait, "wait", false, "wait until the run ends and print its output")
	return cmd
}

// reportStarted reports a run that a call just created or resumed (verb says which): with
// wait, it waits for the run to end and reports that (waitAndReport); otherwise it prints
// the run (-o json) or one line and how to wait for it.
func (a *app) reportStarted(ctx context.Context, c agentserverv1.RunServiceClient, verb string, run *agentserverv1.Run, wait bool) error {
	if wait {
		if !a.jsonOutput() {
			fmt.Fprintf(a.env.Stderr, "%s %s\n", verb, run.GetName())
		}
		return a.waitAndReport(ctx, c, run.GetName(), 0)
	}
	if a.jsonOutput() {
		return a.printJSON(run)
	}
	fmt.Fprintf(a.env.Stdout, "%s %s (%s)\n", verb, run.GetName(), run.GetState())
	fmt.Fprintf(a.env.Stderr, "wait for it with: agentctl runs wait %s\n", shortName(run.GetName()))
	return nil
}

func (a *app) newRunsGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show a run",
		Args:  exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callNamed(cmd.Context(), a, a.runClient, "runs", "a run id", args[0],
				func(ctx context.Context, c agentserverv1.RunServiceClient, name string) (*agentserverv1.Run, error) {
					return c.GetRun(ctx, &agentserverv1.GetRunRequest{Name: name})
				},
				func(_ string, run *agentserverv1.Run) error {
					if err := a.describeRun(run); err != nil {
						return err
					}
					if run.GetState() == agentserverv1.Run_INTERRUPTED {
						fmt.Fprintf(a.env.Stderr, "It waits for input. %s\n", resumeHint(run.GetName()))
					}
					return nil
				})
		},
	}
}

func (a *app) describeRun(run *agentserverv1.Run) error {
	now := a.env.Now()
	f := newFields(a.env.Stdout)
	f.add("Name", "%s", run.GetName())
	if run.GetAssistantVersion() != 0 {
		f.add("Assistant", "%s (version %d)", run.GetAssistant(), run.GetAssistantVersion())
	} else {
		f.add("Assistant", "%s", run.GetAssistant())
	}
	if run.GetThread() != "" {
		f.add("Thread", "%s", run.GetThread())
	}
	f.add("State", "%s", run.GetState())
	if run.GetError() != "" {
		f.add("Error", "%s", run.GetError())
	}
	if run.GetStep() != "" {
		f.add("Step", "%s", run.GetStep())
	}
	if run.GetPrompt() != nil {
		f.add("Prompt", "%s", valueJSON(run.GetPrompt()))
	}
	f.add("Attempt", "%s", attempt(run))
	if run.GetNextAttemptTime() != nil {
		f.add("Next attempt", "%s", run.GetNextAttemptTime().AsTime().Local().Format(time.RFC3339))
	}
	f.add("Worker", "%s", orDash(run.GetWorker()))
	f.add("Slot type", "%s", orDash(run.GetSlotType()))
	f.add("Priority", "%s", runPriority(run))
	f.add("Timeout", "%s", duration(run.GetTimeout(), "assistant default"))
	f.add("Created", "%s", timestamp(now, run.GetCreateTime()))
	f.add("Started", "%s", timestamp(now, run.GetStartTime()))
	f.add("Ended", "%s", timestamp(now, run.GetEndTime()))
	f.add("Input", "%s", compactJSON(run.GetInput()))
	f.add("Output", "%s", compactJSON(run.GetOutput()))
	return f.flush()
}

func attempt(run *agentserverv1.Run) string {
	if run.GetMaxAttempts() > 0 {
		return fmt.Sprintf("%d/%d", run.GetAttempt(), run.GetMaxAttempts())
	}
	return fmt.Sprint(run.GetAttempt())
}

func runPriority(run *agentserverv1.Run) string {
	if run.Priority == nil {
		return "-"
	}
	return fmt.Sprint(run.GetPriority())
}

// parseState reads a run state name such as "succeeded" or "TIMED_OUT".
func parseState(s string) (agentserverv1.Run_State, error) {
	name := strings.ToUpper(strings.ReplaceAll(s, "-", "_"))
	if v, ok := agentserverv1.Run_State_value[name]; ok && v != 0 {
		return agentserverv1.Run_State(v), nil
	}
	var names []string
	for v := range int32(len(agentserverv1.Run_State_name)) {
		if v != 0 {
			names = append(names, agentserverv1.Run_State(v).String())
		}
	}
	return 0, usageErrorf("--state %q: want one of %s", s, strings.Join(names, ", "))
}

// multitaskPolicies are the values of --multitask, as the server spells them.
var multitaskPolicies = []string{"reject", "enqueue", "interrupt"}

// parseMultitask reads a --multitask policy in any case.
func parseMultitask(s string) (string, error) {
	p := strings.ToLower(s)
	if !slices.Contains(multitaskPolicies, p) {
		return "", usageErrorf("--multitask %q: want one of %s", s, strings.Join(multitaskPolicies, ", "))
	}
	return p, nil
}

func (a *app) newRunsListCommand() *cobra.Command {
	var (
		p                pageFlags
		state, assistant string
	)
	cmd := &cobra.Command{
		Use:   "list [--state STATE] [--assistant ID] [--all]",
		Short: "List runs, newest first",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &agentserverv1.ListRunsRequest{}
			if changed(cmd, "state") {
				s, err := parseState(state)
				if err != nil {
					return err
				}
				req.State = s
			}
			if changed(cmd, "assistant") {
				name, err := resourceName("assistants", "an assistant id", assistant)
				if err != nil {
					return err
				}
				req.Assistant = name
			}
			c, err := a.runClient()
			if err != nil {
				return err
			}
			return printList(cmd.Context(), a, p, listing[*agentserverv1.Run]{
				page: func(ctx context.Context, size int32, token string) ([]*agentserverv1.Run, string, error) {
					page := proto.CloneOf(req)
					page.PageSize, page.PageToken = size, token
					resp, err := c.ListRuns(ctx, page)
					return resp.GetRuns(), resp.GetNextPageToken(), err
				},
				response: func(items []*agentserverv1.Run, next string) proto.Message {
					return &agentserverv1.ListRunsResponse{Runs: items, NextPageToken: next}
				},
				noun:   "runs",
				header: "ID\tASSISTANT\tSTATE\tPRIORITY\tATTEMPT\tWORKER\tCREATED",
				row: func(now time.Time, r *agentserverv1.Run) string {
					return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s", shortName(r.GetName()), shortName(r.GetAssistant()),
						r.GetState(), runPriority(r), attempt(r), orDash(shortName(r.GetWorker())), ago(now, r.GetCreateTime()))
				},
			})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&state, "state", "", "only runs in this state, e.g. SUCCEEDED, FAILED, RUNNING")
	fs.StringVar(&assistant, "assistant", "", "only runs of this assistant: ID or assistants/ID")
	p.register(fs)
	return cmd
}

func (a *app) newRunsCancelCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a run (idempotent)",
		Args:  exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callNamed(cmd.Context(), a, a.runClient, "runs", "a run id", args[0],
				func(ctx context.Context, c agentserverv1.RunServiceClient, name string) (*agentserverv1.Run, error) {
					return c.CancelRun(ctx, &agentserverv1.CancelRunRequest{Name: name})
				},
				func(_ string, run *agentserverv1.Run) error {
					_, err := fmt.Fprintf(a.env.Stdout, "cancelled %s (now %s)\n", run.GetName(), run.GetState())
					return err
				})
		},
	}
}

func (a *app) newRunsWaitCommand() *cobra.Command {
	var limit time.Duration
	cmd := &cobra.Command{
		Use:   "wait ID [--timeout 10m]",
		Short: "Wait until a run ends, then print its output",
		Long: `Wait blocks until the run is SUCCEEDED, FAILED, CANCELLED or TIMED_OUT, or INTERRUPTED
(waiting for input), showing its state on stderr when stderr is a terminal.

In text mode it prints the run's output (JSON) when it SUCCEEDED, and the error otherwise;
with -o json it prints the run. Exit code: 0 SUCCEEDED, 1 FAILED, CANCELLED, TIMED_OUT or
still not ended after --timeout, 3 INTERRUPTED.`,
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
			return a.waitAndReport(cmd.Context(), c, name, limit)
		},
	}
	cmd.Flags().DurationVar(&limit, "timeout", 10*time.Minute, "how long to wait at most (0 = until the run ends)")
	return cmd
}

// stopped reports whether a run will not change state without someone acting: it ended, or it
// waits for input.
func stopped(s agentserverv1.Run_State) bool {
	switch s {
	case agentserverv1.Run_SUCCEEDED, agentserverv1.Run_FAILED, agentserverv1.Run_CANCELLED,
		agentserverv1.Run_TIMED_OUT, agentserverv1.Run_INTERRUPTED:
		return true
	}
	return false
}

// waitAndReport waits for the run name (at most limit; 0 = no limit), prints the outcome and
// returns the error that sets the exit code.
func (a *app) waitAndReport(ctx context.Context, c agentserverv1.RunServiceClient, name string, limit time.Duration) error {
	run, err := a.waitRun(ctx, c, name, limit)
	if err != nil {
		if isCancelled(ctx, err) {
			fmt.Fprintf(a.env.Stderr, "Stopped waiting; %s goes on. Check it with `agentctl runs get %s`.\n", name, shortName(name))
		}
		return err
	}
	return a.reportOutcome(run, name, limit, false)
}

// reportOutcome tells how a waited or watched run stopped and returns the error that sets
// the exit code. A wait prints the run (-o json) or its output (text) on stdout; a watch
// (watched) has printed the run's events there instead, and adds nothing to them.
func (a *app) reportOutcome(run *agentserverv1.Run, name string, limit time.Duration, watched bool) error {
	if a.jsonOutput() && !watched {
		if err := a.printJSON(run); err != nil {
			return err
		}
	}
	id := shortName(name)
	switch run.GetState() {
	case agentserverv1.Run_SUCCEEDED:
		if a.jsonOutput() {
			return nil
		}
		if watched {
			fmt.Fprintf(a.env.Stderr, "%s SUCCEEDED; see its output with `agentctl runs get %s`.\n", name, id)
			return nil
		}
		b, err := indentedJSON(run.GetOutput())
		if err != nil {
			return fmt.Errorf("encoding the output of %s: %w", name, err)
		}
		_, err = a.env.Stdout.Write(b)
		return err
	case agentserverv1.Run_INTERRUPTED:
		msg := name + " is INTERRUPTED"
		if run.GetStep() != "" {
			msg += fmt.Sprintf(" at step %q", run.GetStep())
		}
		hint := resumeHint(name)
		if run.GetPrompt() != nil {
			hint = fmt.Sprintf("Prompt: %s\n%s", valueJSON(run.GetPrompt()), hint)
		}
		return &exitError{code: ExitInterrupted, msg: msg + ": it waits for input", hint: hint}
	case agentserverv1.Run_FAILED, agentserverv1.Run_CANCELLED, agentserverv1.Run_TIMED_OUT:
		msg := fmt.Sprintf("%s %s", name, run.GetState())
		if run.GetError() != "" {
			msg += ": " + run.GetError()
		}
		return &exitError{
			code: ExitFailure,
			msg:  msg,
			hint: fmt.Sprintf("Details: `agentctl runs get %s`.", id),
		}
	default:
		verb, again := "Wait", "wait"
		if watched {
			verb, again = "Watch", "watch"
		}
		msg := fmt.Sprintf("%s is still %s", name, run.GetState())
		if limit > 0 {
			msg += fmt.Sprintf(" after %s", limit)
		}
		return &exitError{
			code: ExitFailure,
			msg:  msg,
			hint: fmt.Sprintf("%s longer with `agentctl runs %s %s --timeout 30m`, or stop it with `agentctl runs cancel %s`.", verb, again, id, id),
		}
	}
}

// resumeHint tells how to answer an INTERRUPTED run.
func resumeHint(name string) string {
	return fmt.Sprintf("Answer with `agentctl runs resume %s --value '...'`.", shortName(name))
}

// waitRun calls WaitRun, each call blocking on the server for at most waitChunk, until the run
// stops or limit (0 = none) passes; it then returns the run as last seen.
func (a *app) waitRun(ctx context.Context, c agentserverv1.RunServiceClient, name string, limit time.Duration) (*agentserverv1.Run, error) {
	prog := a.newProgress(name)
	defer prog.done()

	var deadline time.Time
	if limit > 0 {
		deadline = time.Now().Add(limit)
	}
	var last *agentserverv1.Run
	for {
		chunk := a.waitChunk
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 && last != nil {
				return last, nil
			}
			chunk = max(min(chunk, left), time.Millisecond)
		}
		// The call may take the whole chunk on the server; --timeout is the margin on top.
		callCtx, cancel := context.WithTimeout(ctx, chunk+a.cfg.Timeout)
		began := time.Now()
		run, err := c.WaitRun(callCtx, &agentserverv1.WaitRunRequest{Name: name, Timeout: durationpb.New(chunk)})
		cancel()
		if err != nil {
			return nil, err
		}
		prog.update(run)
		if stopped(run.GetState()) {
			return run, nil
		}
		unchanged := last != nil && last.GetState() == run.GetState()
		last = run
		if took := time.Since(began); unchanged && took < a.waitPace {
			if err := sleep(ctx, a.waitPace-took); err != nil {
				return nil, err
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
