package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

func (a *app) newWorkersCommand() *cobra.Command {
	cmd := newGroup("workers", "Show the workers of the cluster", "worker")
	cmd.AddCommand(a.newWorkersListCommand())
	return cmd
}

func (a *app) newWorkersListCommand() *cobra.Command {
	var (
		p        pageFlags
		showLost bool
	)
	cmd := &cobra.Command{
		Use:   "list [--show-lost] [--all]",
		Short: "List workers with their slots, GPUs and last heartbeat",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := p.validate(); err != nil {
				return err
			}
			c, err := a.clusterClient()
			if err != nil {
				return err
			}
			items, next, err := listPages(cmd.Context(), p, func(ctx context.Context, size int32, token string) ([]*agentserverv1.Worker, string, error) {
				ctx, cancel := a.callContext(ctx)
				defer cancel()
				resp, err := c.ListWorkers(ctx, &agentserverv1.ListWorkersRequest{PageSize: size, PageToken: token, ShowLost: showLost})
				return resp.GetWorkers(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.printJSON(&agentserverv1.ListWorkersResponse{Workers: items, NextPageToken: next})
			}
			if len(items) == 0 {
				fmt.Fprintln(a.env.Stderr, "No workers.")
				return nil
			}
			now := a.env.Now()
			tw := newTable(a.env.Stdout)
			fmt.Fprintln(tw, "NAME\tPOOL\tSTATE\tSLOTS\tGPUS\tHEARTBEAT")
			for _, w := range items {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n",
					shortName(w.GetName()), orDash(w.GetPool()), w.GetState(), slots(w.GetSlots()),
					gpus(w.GetGpus()), ago(now, w.GetHeartbeatTime()))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			a.morePages(next)
			return nil
		},
	}
	cmd.Flags().BoolVar(&showLost, "show-lost", false, "include workers whose session ended (LOST)")
	p.register(cmd.Flags())
	return cmd
}

// slots renders slot inventory as used/total per type: "cpu 1/4 gpu 0/1".
func slots(inv []*agentserverv1.SlotInventory) string {
	parts := make([]string, 0, len(inv))
	for _, s := range inv {
		parts = append(parts, fmt.Sprintf("%s %d/%d", s.GetType(), s.GetUsed(), s.GetTotal()))
	}
	return orDash(strings.Join(parts, " "))
}

// gpus renders GPUs by model, counting repeats in order of first appearance:
// "2x NVIDIA H100, 1x NVIDIA L4".
func gpus(list []*agentserverv1.Gpu) string {
	var models []string
	count := map[string]int{}
	for _, g := range list {
		m := g.GetModel()
		if m == "" {
			m = "GPU"
		}
		if count[m] == 0 {
			models = append(models, m)
		}
		count[m]++
	}
	parts := make([]string, len(models))
	for i, m := range models {
		parts[i] = fmt.Sprintf("%dx %s", count[m], m)
	}
	return orDash(strings.Join(parts, ", "))
}
