package api

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/flow"
	"github.com/agentserver/agentserver/pkg/store"
)

func toStruct(m map[string]any) *structpb.Struct {
	if m == nil {
		return nil
	}
	s, err := structpb.NewStruct(m)
	if err != nil {
		// Stored values came from JSON, which structpb always represents.
		panic(fmt.Sprintf("stored JSON not representable as a Struct: %v", err))
	}
	return s
}

func toTimestamp(t *time.Time) *timestamppb.Timestamp {
	if t == nil {
		return nil
	}
	return timestamppb.New(*t)
}

func toDuration(d time.Duration) *durationpb.Duration {
	if d <= 0 {
		return nil
	}
	return durationpb.New(d)
}

func assistantToProto(a *store.Assistant) *agentserverv1.Assistant {
	return &agentserverv1.Assistant{
		Name:             "assistants/" + a.ID,
		DisplayName:      a.DisplayName,
		Flow:             a.Flow,
		SlotType:         a.SlotType,
		Priority:         a.Priority,
		ConcurrencyLimit: a.ConcurrencyLimit,
		Timeout:          toDuration(a.Timeout),
		MaxAttempts:      a.MaxAttempts,
		Version:          a.Version,
		CreateTime:       timestamppb.New(a.CreateTime),
		UpdateTime:       timestamppb.New(a.UpdateTime),
		Config:           toStruct(a.Config),
		Resources:        resourcesToProto(a),
	}
}

func resourcesToProto(a *store.Assistant) *agentserverv1.AssistantResources {
	if a.GPUMemoryBytes == 0 {
		return nil
	}
	return &agentserverv1.AssistantResources{GpuMemory: flow.FormatQuantity(a.GPUMemoryBytes)}
}

func runToProto(r *store.Run) *agentserverv1.Run {
	p := r.Priority
	out := &agentserverv1.Run{
		Name:             "runs/" + r.ID.String(),
		Assistant:        "assistants/" + r.AssistantID,
		Input:            toStruct(r.Input),
		Priority:         &p,
		State:            agentserverv1.Run_State(r.State),
		Output:           toStruct(r.Output),
		Error:            r.Error,
		Attempt:          r.Attempt,
		Timeout:          toDuration(r.Timeout),
		CreateTime:       timestamppb.New(r.CreateTime),
		StartTime:        toTimestamp(r.StartTime),
		EndTime:          toTimestamp(r.EndTime),
		AssistantVersion: r.AssistantVersion,
		SlotType:         r.SlotType,
		MaxAttempts:      r.MaxAttempts,
		NextAttemptTime:  toTimestamp(r.NextAttemptTime),
	}
	if r.ThreadID != "" {
		out.Thread = "threads/" + r.ThreadID
	}
	out.Step = r.Step
	if r.Prompt != nil {
		if v, err := structpb.NewValue(r.Prompt); err == nil {
			out.Prompt = v
		}
	}
	if r.WorkerID != "" {
		out.Worker = "workers/" + r.WorkerID
	}
	return out
}

func workerToProto(w *store.Worker) *agentserverv1.Worker {
	out := &agentserverv1.Worker{
		Name:             "workers/" + w.ID,
		Pool:             w.Pool,
		MemoryTotalBytes: w.MemoryTotalBytes,
		MemoryFreeBytes:  w.MemoryFreeBytes,
		Labels:           w.Labels,
		State:            agentserverv1.Worker_State(w.State),
		Hostname:         w.Hostname,
		ConnectTime:      timestamppb.New(w.ConnectTime),
		HeartbeatTime:    timestamppb.New(w.HeartbeatTime),
		Scheduler:        w.SchedulerID,
	}
	for _, s := range w.Slots {
		out.Slots = append(out.Slots, &agentserverv1.SlotInventory{Type: s.Type, Total: s.Total, Used: s.Used})
	}
	for _, g := range w.GPUs {
		out.Gpus = append(out.Gpus, &agentserverv1.Gpu{Index: g.Index, Uuid: g.UUID, Model: g.Model,
			MemoryTotalBytes: g.MemoryTotalBytes, MemoryUsedBytes: g.MemoryUsedBytes,
			UtilizationPercent: g.UtilizationPercent, TemperatureCelsius: g.TemperatureCelsius})
	}
	return out
}

func threadToProto(t *store.Thread) *agentserverv1.Thread {
	out := &agentserverv1.Thread{
		Name:       "threads/" + t.ID,
		Metadata:   toStruct(t.Metadata),
		CreateTime: timestamppb.New(t.CreateTime),
		UpdateTime: timestamppb.New(t.UpdateTime),
	}
	if t.ActiveRunID != nil {
		out.ActiveRun = "runs/" + t.ActiveRunID.String()
	}
	return out
}
