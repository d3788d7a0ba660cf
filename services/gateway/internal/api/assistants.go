package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/emptypb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/flow"
	"github.com/agentserver/agentserver/pkg/store"
)

// Assistants implements agentserverv1.AssistantServiceServer.
type Assistants struct {
	agentserverv1.UnimplementedAssistantServiceServer
	Store  *store.Store
	Limits Limits
	Log    *slog.Logger
	// Cache serves GetAssistant from memory for a short TTL; nil disables it.
	Cache *AssistantCache
}

// tenant returns the caller's tenant. Until API keys exist every caller is the default
// tenant; every query is already scoped by it.
func tenant(context.Context) string { return store.DefaultTenant }

// validateFlow parses the flow and reports its first problems under field.
func validateFlow(field, src string) error {
	if strings.TrimSpace(src) == "" {
		return invalid(field, "must not be empty: give the flow YAML (executors and optional steps)")
	}
	if _, err := flow.Parse([]byte(src)); err != nil {
		var fe flow.Errors
		if errors.As(err, &fe) {
			return invalid(field, "%s", fe.Error())
		}
		return invalid(field, "%s", err.Error())
	}
	return nil
}

// validateAssistant checks every settable field of a.
func (s *Assistants) validateAssistant(a *agentserverv1.Assistant, paths map[string]bool) error {
	all := paths == nil
	if all || paths["flow"] {
		if err := validateFlow("assistant.flow", a.GetFlow()); err != nil {
			return err
		}
	}
	if (all || paths["slot_type"]) && a.GetSlotType() != "" && !slotTypePattern.MatchString(a.GetSlotType()) {
		return invalid("assistant.slot_type", "must be 1-32 characters of a-z, 0-9, '_' and '-', starting with a letter (got %q)", a.GetSlotType())
	}
	if (all || paths["concurrency_limit"]) && a.GetConcurrencyLimit() < 0 {
		return invalid("assistant.concurrency_limit", "must not be negative (0 = unlimited)")
	}
	if (all || paths["max_attempts"]) && (a.GetMaxAttempts() < 0 || a.GetMaxAttempts() > maxAttemptsCap) {
		return invalid("assistant.max_attempts", "must be between 0 (cluster default) and %d", maxAttemptsCap)
	}
	if all || paths["timeout"] {
		if t := a.GetTimeout(); t != nil {
			if err := t.CheckValid(); err != nil || t.AsDuration() < 0 {
				return invalid("assistant.timeout", "must be a non-negative duration")
			}
			if t.AsDuration() > s.Limits.MaxTimeout {
				return invalid("assistant.timeout", "must be at most the cluster maximum of %s", s.Limits.MaxTimeout)
			}
		}
	}
	if all || paths["resources"] {
		if _, err := gpuMemory(a); err != nil {
			return err
		}
	}
	if len(a.GetDisplayName()) > 256 {
		return invalid("assistant.display_name", "must be at most 256 bytes")
	}
	return nil
}

// gpuMemory parses resources.gpu_memory (0 when unset); it needs slot_type "gpu".
func gpuMemory(a *agentserverv1.Assistant) (int64, error) {
	q := a.GetResources().GetGpuMemory()
	if q == "" {
		return 0, nil
	}
	n, err := flow.ParseQuantity(q)
	if err != nil || n <= 0 {
		return 0, invalid("assistant.resources.gpu_memory", "must be a positive quantity such as 8Gi or 512Mi (got %q)", q)
	}
	if a.GetSlotType() != "gpu" {
		return 0, invalid("assistant.resources.gpu_memory", "needs slot_type \"gpu\" (got %q)", a.GetSlotType())
	}
	return n, nil
}

// CreateAssistant creates an assistant at version 1.
func (s *Assistants) CreateAssistant(ctx context.Context, req *agentserverv1.CreateAssistantRequest) (*agentserverv1.Assistant, error) {
	a := req.GetAssistant()
	if a == nil {
		return nil, invalid("assistant", "is required")
	}
	id := req.GetAssistantId()
	if id == "" {
		id = "a-" + strings.ReplaceAll(uuid.NewString(), "-", "")[:12]
	} else if !idPattern.MatchString(id) {
		return nil, invalid("assistant_id", "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter (got %q)", id)
	}
	if err := s.validateAssistant(a, nil); err != nil {
		return nil, err
	}
	slotType := a.GetSlotType()
	if slotType == "" {
		slotType = "cpu"
	}
	gpuMem, _ := gpuMemory(a)
	out, err := s.Store.CreateAssistant(ctx, &store.Assistant{
		GPUMemoryBytes: gpuMem,
		TenantID:       tenant(ctx), ID: id, DisplayName: a.GetDisplayName(), Flow: a.GetFlow(), SlotType: slotType,
		Priority: a.GetPriority(), ConcurrencyLimit: a.GetConcurrencyLimit(), Timeout: a.GetTimeout().AsDuration(),
		MaxAttempts: a.GetMaxAttempts(), Config: a.GetConfig().AsMap(),
	})
	if errors.Is(err, store.ErrAlreadyExists) {
		return nil, withDetails(codes.AlreadyExists, fmt.Sprintf("assistant %q already exists; update it, or choose another assistant_id", "assistants/"+id), "ALREADY_EXISTS")
	}
	if err != nil {
		return nil, err
	}
	s.Cache.put(out)
	return assistantToProto(out), nil
}

// GetAssistant returns an assistant, from this gateway's cache when it read it less than
// the cache's TTL ago (see AssistantCache).
func (s *Assistants) GetAssistant(ctx context.Context, req *agentserverv1.GetAssistantRequest) (*agentserverv1.Assistant, error) {
	id, err := parseAssistantName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	a, err := s.Cache.get(ctx, tenant(ctx), id, s.Store.GetAssistant)
	if err != nil {
		return nil, notFound(err, "assistant", req.GetName())
	}
	return assistantToProto(a), nil
}

// ListAssistants lists assistants in id order.
func (s *Assistants) ListAssistants(ctx context.Context, req *agentserverv1.ListAssistantsRequest) (*agentserverv1.ListAssistantsResponse, error) {
	n, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	var after string
	if req.GetPageToken() != "" {
		if err := decodeToken(req.GetPageToken(), &after); err != nil {
			return nil, err
		}
	}
	list, err := s.Store.ListAssistants(ctx, tenant(ctx), n+1, after)
	if err != nil {
		return nil, err
	}
	resp := &agentserverv1.ListAssistantsResponse{}
	if len(list) > n {
		list = list[:n]
		resp.NextPageToken = encodeToken(list[n-1].ID)
	}
	for _, a := range list {
		resp.Assistants = append(resp.Assistants, assistantToProto(a))
	}
	return resp, nil
}

var updatable = map[string]bool{
	"display_name": true, "flow": true, "slot_type": true, "priority": true, "concurrency_limit": true,
	"timeout": true, "max_attempts": true, "config": true, "resources": true,
}

// UpdateAssistant updates the fields in update_mask (all set fields when empty) and
// stores a new version.
func (s *Assistants) UpdateAssistant(ctx context.Context, req *agentserverv1.UpdateAssistantRequest) (*agentserverv1.Assistant, error) {
	a := req.GetAssistant()
	if a == nil {
		return nil, invalid("assistant", "is required")
	}
	id, err := parseAssistantName("assistant.name", a.GetName())
	if err != nil {
		return nil, err
	}
	paths := make(map[string]bool)
	for _, p := range req.GetUpdateMask().GetPaths() {
		if !updatable[p] {
			return nil, invalid("update_mask", "%q is not an updatable field of an assistant", p)
		}
		paths[p] = true
	}
	if len(paths) == 0 {
		// No mask: every field that is set (AIP-134).
		for p, set := range map[string]bool{
			"display_name": a.GetDisplayName() != "", "flow": a.GetFlow() != "", "slot_type": a.GetSlotType() != "",
			"priority": a.GetPriority() != 0, "concurrency_limit": a.GetConcurrencyLimit() != 0,
			"timeout": a.GetTimeout() != nil, "max_attempts": a.GetMaxAttempts() != 0, "config": a.GetConfig() != nil,
			"resources": a.GetResources() != nil,
		} {
			if set {
				paths[p] = true
			}
		}
	}
	if err := s.validateAssistant(a, paths); err != nil {
		return nil, err
	}
	s.Cache.invalidate(tenant(ctx), id)
	out, err := s.Store.UpdateAssistant(ctx, tenant(ctx), id, func(cur *store.Assistant) error {
		if paths["display_name"] {
			cur.DisplayName = a.GetDisplayName()
		}
		if paths["flow"] {
			cur.Flow = a.GetFlow()
		}
		if paths["slot_type"] {
			cur.SlotType = a.GetSlotType()
			if cur.SlotType == "" {
				cur.SlotType = "cpu"
			}
		}
		if paths["priority"] {
			cur.Priority = a.GetPriority()
		}
		if paths["concurrency_limit"] {
			cur.ConcurrencyLimit = a.GetConcurrencyLimit()
		}
		if paths["timeout"] {
			cur.Timeout = a.GetTimeout().AsDuration()
		}
		if paths["max_attempts"] {
			cur.MaxAttempts = a.GetMaxAttempts()
		}
		if paths["config"] {
			cur.Config = a.GetConfig().AsMap()
		}
		if paths["resources"] {
			cur.GPUMemoryBytes, _ = gpuMemory(a)
		}
		if cur.GPUMemoryBytes > 0 && cur.SlotType != "gpu" {
			return invalid("assistant.resources.gpu_memory", "needs slot_type \"gpu\" (the assistant's is %q)", cur.SlotType)
		}
		return nil
	})
	if err != nil {
		return nil, notFound(err, "assistant", a.GetName())
	}
	s.Cache.put(out)
	return assistantToProto(out), nil
}

// DeleteAssistant deletes an assistant; its runs are kept.
func (s *Assistants) DeleteAssistant(ctx context.Context, req *agentserverv1.DeleteAssistantRequest) (*emptypb.Empty, error) {
	id, err := parseAssistantName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	s.Cache.invalidate(tenant(ctx), id)
	err = s.Store.DeleteAssistant(ctx, tenant(ctx), id)
	// Again after the delete: a read that began before it committed must not stay.
	s.Cache.invalidate(tenant(ctx), id)
	if err != nil {
		return nil, notFound(err, "assistant", req.GetName())
	}
	return &emptypb.Empty{}, nil
}
