package client

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

// RetryPolicy says how a client repeats a call that failed with UNAVAILABLE (its
// gateway went away, or none could be reached), for the calls that are safe to repeat:
//
//   - reads: Get*, List*, WaitRun, GetThreadState, ListRunEvents;
//   - CancelRun, which is idempotent;
//   - CreateRun with a request_id, and BatchCreateRuns when every request has one: the
//     gateway returns the run the first attempt created, if it did.
//
// Other calls (a CreateRun without request_id, updates, deletes, resumes) are never
// repeated once sent, since the gateway may have done them before it went away; gRPC
// itself still retries, transparently, a call that never left the client. Streams
// (StreamRunEvents) are not retried: resume them from the last event's sequence.
type RetryPolicy struct {
	// MaxAttempts is the most attempts of one call, the first included; 1 disables
	// retries.
	MaxAttempts int
	// InitialBackoff is the wait before the first retry; it doubles per retry, with
	// jitter, up to MaxBackoff.
	InitialBackoff time.Duration
	// MaxBackoff caps the wait between attempts.
	MaxBackoff time.Duration
}

// DefaultRetryPolicy returns the default policy: up to 5 attempts, waiting 50 ms, then
// doubling up to 1 s.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{MaxAttempts: 5, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second}
}

func (p RetryPolicy) validate() error {
	if p.MaxAttempts < 1 {
		return errors.New("client: RetryPolicy.MaxAttempts must be at least 1")
	}
	if p.MaxAttempts > 1 && (p.InitialBackoff <= 0 || p.MaxBackoff < p.InitialBackoff) {
		return errors.New("client: RetryPolicy backoffs must satisfy 0 < InitialBackoff <= MaxBackoff")
	}
	return nil
}

// idempotent are the methods that may always be repeated.
var idempotent = map[string]bool{
	agentserverv1.AssistantService_GetAssistant_FullMethodName:   true,
	agentserverv1.AssistantService_ListAssistants_FullMethodName: true,
	agentserverv1.ClusterService_ListWorkers_FullMethodName:      true,
	agentserverv1.RunService_GetRun_FullMethodName:               true,
	agentserverv1.RunService_ListRuns_FullMethodName:             true,
	agentserverv1.RunService_CancelRun_FullMethodName:            true,
	agentserverv1.RunService_WaitRun_FullMethodName:              true,
	agentserverv1.RunService_ListRunEvents_FullMethodName:        true,
	agentserverv1.ThreadService_GetThread_FullMethodName:         true,
	agentserverv1.ThreadService_ListThreads_FullMethodName:       true,
	agentserverv1.ThreadService_GetThreadState_FullMethodName:    true,
}

// Retryable reports whether the policy repeats a call of method (a full method name)
// with request req.
func Retryable(method string, req any) bool {
	if idempotent[method] {
		return true
	}
	switch r := req.(type) {
	case *agentserverv1.CreateRunRequest:
		return method == agentserverv1.RunService_CreateRun_FullMethodName && r.GetRequestId() != ""
	case *agentserverv1.BatchCreateRunsRequest:
		if method != agentserverv1.RunService_BatchCreateRuns_FullMethodName || len(r.GetRequests()) == 0 {
			return false
		}
		for _, c := range r.GetRequests() {
			if c.GetRequestId() == "" {
				return false
			}
		}
		return true
	}
	return false
}

func (p RetryPolicy) interceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if !Retryable(method, req) {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		backoff := p.InitialBackoff
		for attempt := 1; ; attempt++ {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if status.Code(err) != codes.Unavailable || attempt >= p.MaxAttempts || ctx.Err() != nil {
				return err
			}
			// Half to all of backoff, so that clients cut off together do not
			// come back together.
			wait := backoff/2 + time.Duration(rand.Int64N(int64(backoff)/2+1))
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return err
			case <-t.C:
			}
			backoff = min(2*backoff, p.MaxBackoff)
			if m, ok := reply.(proto.Message); ok {
				proto.Reset(m)
			}
		}
	}
}
