package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

func (a *app) newThreadsCommand() *cobra.Command {
	cmd := newGroup("threads", "Create, list, inspect and delete threads (sessions that keep state across runs)", "thread")
	cmd.AddCommand(
		a.newThreadsCreateCommand(),
		a.newThreadsGetCommand(),
		a.newThreadsListCommand(),
		a.newThreadsDeleteCommand(),
		a.newThreadsStateCommand(),
	)
	return cmd
}

func (a *app) newThreadsCreateCommand() *cobra.Command {
	var state, stateFile, metadata string
	cmd := &cobra.Command{
		Use:   "create [--state JSON | --state-file FILE] [--metadata JSON]",
		Short: "Create a thread, optionally with an initial state",
		Long: `Create makes a thread. Runs created with --thread start from its state and write their
output back to it; at most one run is active on a thread at a time.`,
		Example: `  agentctl threads create --state '{"history": []}' --metadata '{"user": "ada"}'
  agentctl runs create --assistant chat --thread t1 --input '{"message": "hi"}' --wait`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &agentserverv1.CreateThreadRequest{Thread: &agentserverv1.Thread{}}
			var err error
			switch {
			case changed(cmd, "state") && changed(cmd, "state-file"):
				return usageErrorf("give --state or --state-file, not both")
			case changed(cmd, "state"):
				if req.State, err = parseObject("--state", []byte(state)); err != nil {
					return err
				}
			case changed(cmd, "state-file"):
				b, err := a.readFileArg("--state-file", stateFile)
				if err != nil {
					return err
				}
				if req.State, err = parseObject("--state-file", b); err != nil {
					return err
				}
			}
			if changed(cmd, "metadata") {
				if req.Thread.Metadata, err = parseObject("--metadata", []byte(metadata)); err != nil {
					return err
				}
			}
			c, err := a.threadClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			thread, err := c.CreateThread(ctx, req)
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.printJSON(thread)
			}
			fmt.Fprintf(a.env.Stdout, "created %s\n", thread.GetName())
			fmt.Fprintf(a.env.Stderr, "run on it with: agentctl runs create --assistant ID --thread %s\n", shortName(thread.GetName()))
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&state, "state", "", `initial state, a JSON object, e.g. '{"history":[]}'`)
	fs.StringVar(&stateFile, "state-file", "", "file with the initial state as a JSON object (- reads stdin)")
	fs.StringVar(&metadata, "metadata", "", "free-form metadata, a JSON object")
	return cmd
}

func (a *app) newThreadsGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show a thread",
		Args:  exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callNamed(cmd.Context(), a, a.threadClient, "threads", "a thread id", args[0],
				func(ctx context.Context, c agentserverv1.ThreadServiceClient, name string) (*agentserverv1.Thread, error) {
					return c.GetThread(ctx, &agentserverv1.GetThreadRequest{Name: name})
				},
				func(_ string, thread *agentserverv1.Thread) error {
					now := a.env.Now()
					f := newFields(a.env.Stdout)
					f.add("Name", "%s", thread.GetName())
					f.add("Active run", "%s", orDash(thread.GetActiveRun()))
					f.add("Created", "%s", timestamp(now, thread.GetCreateTime()))
					f.add("Updated", "%s", timestamp(now, thread.GetUpdateTime()))
					f.add("Metadata", "%s", compactJSON(thread.GetMetadata()))
					return f.flush()
				})
		},
	}
}

func (a *app) newThreadsListCommand() *cobra.Command {
	var p pageFlags
	cmd := &cobra.Command{
		Use:   "list [--all]",
		Short: "List threads, newest first",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.threadClient()
			if err != nil {
				return err
			}
			return printList(cmd.Context(), a, p, listing[*agentserverv1.Thread]{
				page: func(ctx context.Context, size int32, token string) ([]*agentserverv1.Thread, string, error) {
					resp, err := c.ListThreads(ctx, &agentserverv1.ListThreadsRequest{PageSize: size, PageToken: token})
					return resp.GetThreads(), resp.GetNextPageToken(), err
				},
				response: func(items []*agentserverv1.Thread, next string) proto.Message {
					return &agentserverv1.ListThreadsResponse{Threads: items, NextPageToken: next}
				},
				noun:   "threads",
				header: "ID\tACTIVE RUN\tCREATED\tUPDATED",
				row: func(now time.Time, t *agentserverv1.Thread) string {
					return fmt.Sprintf("%s\t%s\t%s\t%s", shortName(t.GetName()), orDash(shortName(t.GetActiveRun())),
						ago(now, t.GetCreateTime()), ago(now, t.GetUpdateTime()))
				},
			})
		},
	}
	p.register(cmd.Flags())
	return cmd
}

func (a *app) newThreadsDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a thread that has no active run",
		Args:  exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callNamed(cmd.Context(), a, a.threadClient, "threads", "a thread id", args[0],
				func(ctx context.Context, c agentserverv1.ThreadServiceClient, name string) (*emptypb.Empty, error) {
					return c.DeleteThread(ctx, &agentserverv1.DeleteThreadRequest{Name: name})
				},
				func(name string, _ *emptypb.Empty) error {
					_, err := fmt.Fprintf(a.env.Stdout, "deleted %s\n", name)
					return err
				})
		},
	}
}

func (a *app) newThreadsStateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "state ID",
		Short: "Print a thread's current state",
		Long: `State prints the thread's state as JSON on stdout: its initial state, then the output of
the last run that succeeded on it. With -o json it prints the ThreadState (the values, the run
that wrote them and when).`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callNamed(cmd.Context(), a, a.threadClient, "threads", "a thread id", args[0],
				func(ctx context.Context, c agentserverv1.ThreadServiceClient, name string) (*agentserverv1.ThreadState, error) {
					return c.GetThreadState(ctx, &agentserverv1.GetThreadStateRequest{Name: name})
				},
				func(name string, st *agentserverv1.ThreadState) error {
					b, err := indentedJSON(st.GetValues())
					if err != nil {
						return fmt.Errorf("encoding the state of %s: %w", name, err)
					}
					if _, err := a.env.Stdout.Write(b); err != nil {
						return err
					}
					if st.GetRun() != "" {
						fmt.Fprintf(a.env.Stderr, "written by %s %s\n", st.GetRun(), ago(a.env.Now(), st.GetUpdateTime()))
					}
					return nil
				})
		},
	}
}
