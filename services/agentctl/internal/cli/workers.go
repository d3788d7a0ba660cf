package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

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
			c, err := a.clusterClient()
			if err != nil {
				return err
			}
			return printList(cmd.Context(), a, p, listing[*agentserverv1.Worker]{
				page: func(ctx context.Context, size int32, token string) ([]*agentserverv1.Worker, string, error) {
					resp, err := c.ListWorkers(ctx, &agentserverv1.ListWorkersRequest{PageSize: size, PageToken: token, ShowLost: showLost})
					return resp.GetWorkers(), resp.GetNextPageToken(), err
				},
				response: func(items []*agentserverv1.Worker, next string) proto.Message {
					return &agentserverv1.ListWorkersResponse{Workers: items, NextPageToken: next}
				},
				noun:   "workers",
				header: "NAME\tPOOL\tSTATE\tSLOTS\tGPUS\tHEARTBEAT",
				row: func(now time.Time, w *agentserverv1.Worker) string {
					return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s", shortName(w.GetName()), orDash(w.GetPool()), w.GetState(),
						slots(w.GetSlots()), gpus(w.GetGpus()), ago(now, w.GetHeartbeatTime()))
				},
			})
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
