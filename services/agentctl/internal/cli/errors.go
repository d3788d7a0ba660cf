package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/spf13/cobra"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// usageError is a wrong command line: agentctl exits with ExitUsage and sends nothing.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// exitError ends a command that did its work but whose outcome is not a success, such as a
// waited run that FAILED: msg goes to stderr and code becomes the exit code.
type exitError struct {
	code int
	msg  string
	hint string
}

func (e *exitError) Error() string { return e.msg }

// report prints err on stderr in a form a person can act on and returns the exit code.
func (a *app) report(ctx context.Context, cmd *cobra.Command, err error) int {
	w := a.env.Stderr
	var ue usageError
	var ee *exitError
	switch {
	case isCancelled(ctx, err):
		fmt.Fprintln(w, "Interrupted.")
		return ExitSignal
	case errors.As(err, &ue):
		fmt.Fprintf(w, "Error: %v\nRun '%s --help' for usage.\n", ue.err, cmd.CommandPath())
		return ExitUsage
	case errors.As(err, &ee):
		fmt.Fprintf(w, "Error: %s\n", ee.msg)
		if ee.hint != "" {
			fmt.Fprintln(w, ee.hint)
		}
		return ee.code
	}
	if st, ok := grpcStatus(err); ok {
		a.printStatus(w, cmd, st)
		return ExitFailure
	}
	fmt.Fprintf(w, "Error: %v\n", err)
	return ExitFailure
}

// grpcStatus returns the status of err when err is, or wraps, a gRPC status error.
func grpcStatus(err error) (*status.Status, bool) {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return nil, false
	}
	return se.GRPCStatus(), true
}

func statusCodeIsCanceled(err error) bool {
	st, ok := grpcStatus(err)
	return ok && st.Code() == codes.Canceled
}

// printStatus prints a gRPC status: its message, the details the gateway attaches
// (google.rpc.ErrorInfo, BadRequest, ...) and what to do next.
func (a *app) printStatus(w io.Writer, cmd *cobra.Command, st *status.Status) {
	fmt.Fprintf(w, "Error: %s: %s\n", st.Code(), st.Message())
	var violations bool
	var retryIn string
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			fmt.Fprintf(w, "  reason: %s", d.GetReason())
			if d.GetDomain() != "" {
				fmt.Fprintf(w, " (%s)", d.GetDomain())
			}
			fmt.Fprintln(w)
			for _, k := range slices.Sorted(maps.Keys(d.GetMetadata())) {
				fmt.Fprintf(w, "  %s: %s\n", k, d.GetMetadata()[k])
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				violations = true
				fmt.Fprintf(w, "  - %s: %s\n", v.GetField(), v.GetDescription())
			}
		case *errdetails.PreconditionFailure:
			for _, v := range d.GetViolations() {
				fmt.Fprintf(w, "  - %s %s: %s\n", v.GetType(), v.GetSubject(), v.GetDescription())
			}
		case *errdetails.QuotaFailure:
			for _, v := range d.GetViolations() {
				fmt.Fprintf(w, "  - %s: %s\n", v.GetSubject(), v.GetDescription())
			}
		case *errdetails.RetryInfo:
			if d.GetRetryDelay() != nil {
				retryIn = d.GetRetryDelay().AsDuration().String()
			}
		case *errdetails.RequestInfo:
			if d.GetRequestId() != "" {
				fmt.Fprintf(w, "  reference: %s\n", d.GetRequestId())
			}
		case *errdetails.Help:
			for _, l := range d.GetLinks() {
				fmt.Fprintf(w, "  see: %s %s\n", l.GetDescription(), l.GetUrl())
			}
		case *errdetails.LocalizedMessage:
			if d.GetMessage() != st.Message() {
				fmt.Fprintf(w, "  %s\n", d.GetMessage())
			}
		}
	}
	if hint := a.hint(cmd, st.Code(), violations, retryIn); hint != "" {
		fmt.Fprintln(w, hint)
	}
}

// hint says what to do next after a failed call.
func (a *app) hint(cmd *cobra.Command, code codes.Code, violations bool, retryIn string) string {
	group := commandGroup(cmd)
	switch code {
	case codes.Unavailable:
		return fmt.Sprintf("Is the server running? Start it with `make run`, or set --addr or %s (now %s).", EnvAddr, a.cfg.Addr)
	case codes.DeadlineExceeded:
		return fmt.Sprintf("The gateway did not answer within --timeout (%s); retry with a larger --timeout, or check the server.", a.cfg.Timeout)
	case codes.Unauthenticated:
		return fmt.Sprintf("Set --api-key or %s to a valid API key.", EnvAPIKey)
	case codes.PermissionDenied:
		return "Your API key is not allowed to do this; use a key of the tenant that owns the resource."
	case codes.NotFound:
		if group != "" {
			return fmt.Sprintf("Check the id; `agentctl %s list` shows what exists.", group)
		}
	case codes.AlreadyExists:
		if group != "" {
			return fmt.Sprintf("Choose another id, or look at the existing one with `agentctl %s get ID`.", group)
		}
	case codes.InvalidArgument:
		if violations {
			return "Fix the fields above and try again."
		}
	case codes.ResourceExhausted:
		if retryIn != "" {
			return fmt.Sprintf("Rate limited; retry in %s.", retryIn)
		}
		return "Rate limited; retry later."
	case codes.Unimplemented:
		return fmt.Sprintf("The server at %s does not implement this call; is --addr a gateway of a matching version?", a.cfg.Addr)
	case codes.Internal, codes.Unknown:
		return "The server failed; quote the reference above, if any, when you report it."
	}
	return ""
}

// commandGroup returns the first-level command ("runs", "assistants", ...) of cmd, or "".
func commandGroup(cmd *cobra.Command) string {
	for c := cmd; c != nil && c.HasParent(); c = c.Parent() {
		if !c.Parent().HasParent() {
			return c.Name()
		}
	}
	return ""
}
