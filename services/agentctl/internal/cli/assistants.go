package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

// assistantField ties a flag of create/update to the Assistant field it sets. The order is
// the proto's, so that update masks come out the same way every time.
type assistantField struct {
	flag, path string
}

var assistantFields = []assistantField{
	{"display-name", "display_name"},
	{"flow", "flow"},
	{"slot-type", "slot_type"},
	{"priority", "priority"},
	{"concurrency-limit", "concurrency_limit"},
	{"timeout", "timeout"},
	{"max-attempts", "max_attempts"},
	{"config", "config"},
}

// assistantFlags are the flags that set Assistant fields.
type assistantFlags struct {
	flowFile         string
	displayName      string
	slotType         string
	priority         int32
	concurrencyLimit int32
	timeout          time.Duration
	maxAttempts      int32
	config           string
}

func (f *assistantFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.flowFile, "flow", "", "file with the flow YAML (- reads stdin)")
	fs.StringVar(&f.displayName, "display-name", "", "human readable name")
	fs.StringVar(&f.slotType, "slot-type", "", `slot type runs need: "cpu", "gpu" or a custom label`)
	fs.Int32Var(&f.priority, "priority", 0, "default priority of runs (higher runs first)")
	fs.Int32Var(&f.concurrencyLimit, "concurrency-limit", 0, "most runs executing at once across the cluster (0 = unlimited)")
	fs.DurationVar(&f.timeout, "timeout", 0, "default execution timeout of a run, e.g. 30s (0 = the cluster default)")
	fs.Int32Var(&f.maxAttempts, "max-attempts", 0, "attempts a run gets (0 = the cluster default)")
	fs.StringVar(&f.config, "config", "", `default config passed to every step, a JSON object, e.g. '{"model":"small"}'`)
}

// apply sets on asst the fields whose flags were given and returns their paths.
func (f *assistantFlags) apply(a *app, cmd *cobra.Command, asst *agentserverv1.Assistant) ([]string, error) {
	var paths []string
	for _, fld := range assistantFields {
		if !changed(cmd, fld.flag) {
			continue
		}
		paths = append(paths, fld.path)
		switch fld.path {
		case "display_name":
			asst.DisplayName = f.displayName
		case "flow":
			b, err := a.readFileArg("--flow", f.flowFile)
			if err != nil {
				return nil, err
			}
			asst.Flow = string(b)
		case "slot_type":
			asst.SlotType = f.slotType
		case "priority":
			asst.Priority = f.priority
		case "concurrency_limit":
			asst.ConcurrencyLimit = f.concurrencyLimit
		case "timeout":
			if f.timeout < 0 {
				return nil, usageErrorf("--timeout must not be negative, got %s", f.timeout)
			}
			if f.timeout > 0 {
				asst.Timeout = durationpb.New(f.timeout)
			}
		case "max_attempts":
			asst.MaxAttempts = f.maxAttempts
		case "config":
			cfg, err := parseObject("--config", []byte(f.config))
			if err != nil {
				return nil, err
			}
			asst.Config = cfg
		}
	}
	return paths, nil
}

func (a *app) newAssistantsCommand() *cobra.Command {
	cmd := newGroup("assistants", "Manage assistants: named, versioned agents", "assistant", "asst")
	cmd.AddCommand(
		a.newAssistantsCreateCommand(),
		a.newAssistantsGetCommand(),
		a.newAssistantsListCommand(),
		a.newAssistantsUpdateCommand(),
		a.newAssistantsDeleteCommand(),
	)
	return cmd
}

func (a *app) newAssistantsCreateCommand() *cobra.Command {
	var (
		f  assistantFlags
		id string
	)
	cmd := &cobra.Command{
		Use:   "create --flow FILE [--id ID] [flags]",
		Short: "Create an assistant from a flow file",
		Example: `  agentctl assistants create --flow flow.yaml --id summarizer --slot-type gpu --timeout 5m
  agentctl assistants create --flow - --config '{"model":"small"}' < flow.yaml`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !changed(cmd, "flow") {
				return usageErrorf("--flow is required")
			}
			req := &agentserverv1.CreateAssistantRequest{Assistant: &agentserverv1.Assistant{}}
			if changed(cmd, "id") {
				name, err := resourceName("assistants", "an assistant id", id)
				if err != nil {
					return err
				}
				req.AssistantId = shortName(name)
			}
			if _, err := f.apply(a, cmd, req.Assistant); err != nil {
				return err
			}
			c, err := a.assistantClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			asst, err := c.CreateAssistant(ctx, req)
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.printJSON(asst)
			}
			_, err = fmt.Fprintf(a.env.Stdout, "created %s (version %d)\n", asst.GetName(), asst.GetVersion())
			return err
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "assistant id ([a-z0-9-], starting with a letter); generated when empty")
	f.register(cmd)
	return cmd
}

func (a *app) newAssistantsGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show an assistant (its newest version) and its flow",
		Args:  exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callNamed(cmd.Context(), a, a.assistantClient, "assistants", "an assistant id", args[0],
				func(ctx context.Context, c agentserverv1.AssistantServiceClient, name string) (*agentserverv1.Assistant, error) {
					return c.GetAssistant(ctx, &agentserverv1.GetAssistantRequest{Name: name})
				},
				func(_ string, asst *agentserverv1.Assistant) error {
					return a.describeAssistant(asst)
				})
		},
	}
}

func (a *app) describeAssistant(asst *agentserverv1.Assistant) error {
	now := a.env.Now()
	f := newFields(a.env.Stdout)
	f.add("Name", "%s", asst.GetName())
	f.add("Display name", "%s", orDash(asst.GetDisplayName()))
	f.add("Version", "%d", asst.GetVersion())
	f.add("Slot type", "%s", orDash(asst.GetSlotType()))
	f.add("Priority", "%d", asst.GetPriority())
	f.add("Concurrency limit", "%s", limit(asst.GetConcurrencyLimit(), "unlimited"))
	f.add("Timeout", "%s", duration(asst.GetTimeout(), "cluster default"))
	f.add("Max attempts", "%s", limit(asst.GetMaxAttempts(), "cluster default"))
	f.add("Config", "%s", compactJSON(asst.GetConfig()))
	f.add("Created", "%s", timestamp(now, asst.GetCreateTime()))
	f.add("Updated", "%s", timestamp(now, asst.GetUpdateTime()))
	if err := f.flush(); err != nil {
		return err
	}
	flow := strings.TrimRight(asst.GetFlow(), "\n")
	if flow == "" {
		return nil
	}
	_, err := fmt.Fprintf(a.env.Stdout, "Flow:\n  %s\n", strings.ReplaceAll(flow, "\n", "\n  "))
	return err
}

// limit renders a count where 0 means "no value of its own".
func limit(n int32, zero string) string {
	if n == 0 {
		return zero
	}
	return fmt.Sprint(n)
}

func (a *app) newAssistantsListCommand() *cobra.Command {
	var p pageFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List assistants in name order",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.assistantClient()
			if err != nil {
				return err
			}
			return printList(cmd.Context(), a, p, listing[*agentserverv1.Assistant]{
				page: func(ctx context.Context, size int32, token string) ([]*agentserverv1.Assistant, string, error) {
					resp, err := c.ListAssistants(ctx, &agentserverv1.ListAssistantsRequest{PageSize: size, PageToken: token})
					return resp.GetAssistants(), resp.GetNextPageToken(), err
				},
				response: func(items []*agentserverv1.Assistant, next string) proto.Message {
					return &agentserverv1.ListAssistantsResponse{Assistants: items, NextPageToken: next}
				},
				noun:   "assistants",
				header: "ID\tDISPLAY NAME\tVERSION\tSLOT\tPRIORITY\tCONCURRENCY\tTIMEOUT\tUPDATED",
				row: func(now time.Time, x *agentserverv1.Assistant) string {
					return fmt.Sprintf("%s\t%s\t%d\t%s\t%d\t%s\t%s\t%s",
						shortName(x.GetName()), orDash(x.GetDisplayName()), x.GetVersion(), orDash(x.GetSlotType()),
						x.GetPriority(), limit(x.GetConcurrencyLimit(), "unlimited"), duration(x.GetTimeout(), "default"),
						ago(now, x.GetUpdateTime()))
				},
			})
		},
	}
	p.register(cmd.Flags())
	return cmd
}

func (a *app) newAssistantsUpdateCommand() *cobra.Command {
	var f assistantFlags
	cmd := &cobra.Command{
		Use:   "update ID [--flow FILE] [flags]",
		Short: "Change the fields given as flags; creates a new version",
		Long: `Update changes exactly the fields whose flags are given (they form the update_mask) and
creates a new version of the assistant. A flag given as its zero value clears the field,
e.g. --concurrency-limit 0 removes the limit and --timeout 0 restores the cluster default.`,
		Example: `  agentctl assistants update summarizer --flow flow.yaml
  agentctl assistants update summarizer --priority 5 --max-attempts 3`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := resourceName("assistants", "an assistant id", args[0])
			if err != nil {
				return err
			}
			asst := &agentserverv1.Assistant{Name: name}
			paths, err := f.apply(a, cmd, asst)
			if err != nil {
				return err
			}
			if len(paths) == 0 {
				flags := make([]string, len(assistantFields))
				for i, fld := range assistantFields {
					flags[i] = "--" + fld.flag
				}
				return usageErrorf("nothing to update: give at least one of %s", strings.Join(flags, ", "))
			}
			c, err := a.assistantClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			updated, err := c.UpdateAssistant(ctx, &agentserverv1.UpdateAssistantRequest{
				Assistant:  asst,
				UpdateMask: &fieldmaskpb.FieldMask{Paths: paths},
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.printJSON(updated)
			}
			_, err = fmt.Fprintf(a.env.Stdout, "updated %s (version %d): %s\n",
				updated.GetName(), updated.GetVersion(), strings.Join(paths, ", "))
			return err
		},
	}
	f.register(cmd)
	return cmd
}

func (a *app) newAssistantsDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete ID",
		Short: "Delete an assistant; its existing runs are kept",
		Args:  exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callNamed(cmd.Context(), a, a.assistantClient, "assistants", "an assistant id", args[0],
				func(ctx context.Context, c agentserverv1.AssistantServiceClient, name string) (*emptypb.Empty, error) {
					return c.DeleteAssistant(ctx, &agentserverv1.DeleteAssistantRequest{Name: name})
				},
				func(name string, _ *emptypb.Empty) error {
					_, err := fmt.Fprintf(a.env.Stdout, "deleted %s\n", name)
					return err
				})
		},
	}
}
