package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	"github.com/agentserver/agentserver/pkg/store"
)

// ErrorDomain is the ErrorInfo domain of every error the API returns.
const ErrorDomain = "agentserver.dev"

// FieldError is bad input: the field (request path, e.g. "run.input") and the rule it
// breaks. It maps to INVALID_ARGUMENT with a BadRequest field violation.
type FieldError struct {
	Field string
	Rule  string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Rule }

func invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Rule: fmt.Sprintf(format, args...)}
}

func withDetails(code codes.Code, msg, reason string, details ...protoadapt.MessageV1) error {
	st := status.New(code, msg)
	all := append([]protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}}, details...)
	withD, err := st.WithDetails(all...)
	if err != nil {
		return st.Err()
	}
	return withD.Err()
}

// toStatus maps an error of a handler to a gRPC status. Internal errors are logged with a
// reference and masked.
func toStatus(log *slog.Logger, method string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var fe *FieldError
	var nf *store.AssistantNotFoundError
	var tnf *store.ThreadNotFoundError
	var se *store.StateError
	switch {
	case errors.As(err, &tnf):
		return withDetails(codes.NotFound, "run.thread: "+tnf.Error(), "THREAD_NOT_FOUND",
			&errdetails.ResourceInfo{ResourceType: "agentserver.dev/Thread", ResourceName: "threads/" + tnf.ID})
	case errors.Is(err, store.ErrThreadBusy):
		return withDetails(codes.FailedPrecondition, err.Error(), "THREAD_BUSY")
	case errors.As(err, &se):
		return withDetails(codes.FailedPrecondition, se.Error(), "RUN_STATE")
	case errors.As(err, &fe):
		return withDetails(codes.InvalidArgument, fe.Error(), "INVALID_ARGUMENT",
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: fe.Field, Description: fe.Rule}}})
	case errors.As(err, &nf):
		return withDetails(codes.NotFound, "run.assistant: "+nf.Error(), "ASSISTANT_NOT_FOUND",
			&errdetails.ResourceInfo{ResourceType: "agentserver.dev/Assistant", ResourceName: "assistants/" + nf.ID})
	case errors.Is(err, store.ErrNotFound):
		return withDetails(codes.NotFound, err.Error(), "NOT_FOUND")
	case errors.Is(err, store.ErrAlreadyExists):
		return withDetails(codes.AlreadyExists, err.Error(), "ALREADY_EXISTS")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "request cancelled")
	}
	ref := uuid.NewString()[:8]
	log.Error("internal error", "method", method, "ref", ref, "err", err)
	return withDetails(codes.Internal, fmt.Sprintf("internal error (reference %s); the server log has the cause", ref), "INTERNAL")
}

// UnaryErrors is the server interceptor that maps domain errors to statuses.
func UnaryErrors(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		return resp, toStatus(log, info.FullMethod, err)
	}
}

// StreamErrors is the stream counterpart of UnaryErrors.
func StreamErrors(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return toStatus(log, info.FullMethod, handler(srv, ss))
	}
}

// notFound names the missing resource in a NOT_FOUND error; other errors pass through.
func notFound(err error, kind, name string) error {
	if errors.Is(err, store.ErrNotFound) {
		return withDetails(codes.NotFound, fmt.Sprintf("%s %q does not exist", kind, name), "NOT_FOUND")
	}
	return err
}
