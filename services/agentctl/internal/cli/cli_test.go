package cli

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

func TestWorkersList(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{workerPages: map[string]*agentserverv1.ListWorkersResponse{
		"": {Workers: []*agentserverv1.Worker{
			{
				Name: "workers/gpu-box-1", Pool: "gpu", State: agentserverv1.Worker_READY,
				Slots: []*agentserverv1.SlotInventory{{Type: "cpu", Total: 4, Used: 1}, {Type: "gpu", Total: 1}},
				Gpus: []*agentserverv1.Gpu{
					{Index: 0, Model: "NVIDIA H100"}, {Index: 1, Model: "NVIDIA H100"}, {Index: 2, Model: "NVIDIA L4"},
				},
				HeartbeatTime: timestamppb.New(testNow.Add(-5 * time.Second)),
			},
			{
				Name: "workers/w2", Pool: "cpu", State: agentserverv1.Worker_LOST,
				Slots: []*agentserverv1.SlotInventory{{Type: "cpu", Total: 8, Used: 8}},
			},
		}},
	}})

	res := h.run("workers", "list", "--show-lost")

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.True(t, only[*agentserverv1.ListWorkersRequest](t, h.fake, "ListWorkers").GetShowLost())
	require.Equal(t, ""+
		"NAME       POOL  STATE  SLOTS            GPUS                          HEARTBEAT\n"+
		"gpu-box-1  gpu   READY  cpu 1/4 gpu 0/1  2x NVIDIA H100, 1x NVIDIA L4  5s ago\n"+
		"w2         cpu   LOST   cpu 8/8          -                             -\n", res.stdout)
}

func TestErrorsPrintStatusDetailsAndWhatToDo(t *testing.T) {
	t.Parallel()
	st, err := status.New(codes.InvalidArgument, "invalid assistant").WithDetails(
		&errdetails.ErrorInfo{Reason: "INVALID_FLOW", Domain: "agentserver.v1", Metadata: map[string]string{"line": "3"}},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "assistant.flow", Description: "line 3, column 5: unknown key \"stepz\""},
		}},
	)
	require.NoError(t, err)
	h := newHarness(t, &fakeAPI{err: st.Err()})
	flow := writeFile(t, "flow.yaml", testFlow)

	res := h.run("assistants", "create", "--flow", flow)

	require.Equal(t, ExitFailure, res.code)
	require.Empty(t, res.stdout)
	require.Equal(t, ""+
		"Error: InvalidArgument: invalid assistant\n"+
		"  reason: INVALID_FLOW (agentserver.v1)\n"+
		"  line: 3\n"+
		"  - assistant.flow: line 3, column 5: unknown key \"stepz\"\n"+
		"Fix the fields above and try again.\n", res.stderr)
}

func TestErrorHints(t *testing.T) {
	t.Parallel()
	retry, err := status.New(codes.ResourceExhausted, "rate limit exceeded").WithDetails(
		&errdetails.RetryInfo{RetryDelay: durationpb.New(2 * time.Second)})
	require.NoError(t, err)
	internal, err := status.New(codes.Internal, "internal error").WithDetails(&errdetails.RequestInfo{RequestId: "ref-123"})
	require.NoError(t, err)
	tests := []struct {
		err  error
		args []string
		want []string
	}{
		{status.Error(codes.NotFound, `run "runs/nope" not found`), []string{"runs", "get", "nope"},
			[]string{`Error: NotFound: run "runs/nope" not found`, "`agentctl runs list` shows what exists"}},
		{status.Error(codes.AlreadyExists, "assistant exists"), []string{"assistants", "create", "--flow", "-", "--id", "x"},
			[]string{"`agentctl assistants get ID`"}},
		{status.Error(codes.Unauthenticated, "missing API key"), []string{"workers", "list"},
			[]string{"Set --api-key or AGENTSERVER_API_KEY"}},
		{retry.Err(), []string{"runs", "create", "--assistant", "a"}, []string{"Rate limited; retry in 2s."}},
		{internal.Err(), []string{"runs", "cancel", "r1"}, []string{"reference: ref-123"}},
	}
	for _, tt := range tests {
		t.Run(status.Code(tt.err).String(), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, &fakeAPI{err: tt.err})
			res := h.run(tt.args...)
			require.Equal(t, ExitFailure, res.code)
			for _, w := range tt.want {
				require.Contains(t, res.stderr, w)
			}
		})
	}
}

func TestUnavailableSaysHowToStartTheServer(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	h := newHarness(t, &fakeAPI{})

	res := h.run("--addr", addr, "runs", "create", "--assistant", "a")

	require.Equal(t, ExitFailure, res.code)
	require.Contains(t, res.stderr, "Error: Unavailable:")
	require.Contains(t, res.stderr, "Start it with `make run`, or set --addr or AGENTSERVER_ADDR (now "+addr+")")
}

func TestUsageErrorsExitTwoAndSendNothing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"runs", "frob"}, `unknown command "frob" for "agentctl runs"`},
		{[]string{"runz"}, `did you mean "runs"?`},
		{[]string{"-o", "yaml", "workers", "list"}, `-o/--output must be "text" or "json"`},
		{[]string{"--timeout", "0s", "workers", "list"}, "--timeout must be positive"},
		{[]string{"runs", "get"}, "missing ID"},
		{[]string{"runs", "get", "a", "b"}, "takes 1 argument(s), got 2"},
		{[]string{"runs", "get", "assistants/x"}, `"assistants/x" is not a run id`},
		{[]string{"workers", "list", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"workers", "list", "extra"}, "takes no arguments"},
		{[]string{"assistants", "list", "--page-size", "-1"}, "--page-size must not be negative"},
		{[]string{"runs", "wait", "r1", "--timeout", "-1s"}, "--timeout must not be negative"},
		{[]string{"runs", "watch", "r1", "--timeout", "-1s"}, "--timeout must not be negative"},
		{[]string{"runs", "watch"}, "missing ID"},
		{[]string{"runs", "events", "r1", "--page-size", "-1"}, "--page-size must not be negative"},
		{[]string{"threads", "get", "runs/r1"}, `"runs/r1" is not a thread id`},
		{[]string{"threads", "state"}, "missing ID"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, &fakeAPI{})
			res := h.run(tt.args...)
			require.Equal(t, ExitUsage, res.code, res.stderr)
			require.Contains(t, res.stderr, tt.want)
			require.Contains(t, res.stderr, "--help' for usage.")
			require.Empty(t, h.fake.methods())
		})
	}
}

func TestGroupAloneShowsHelp(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{})

	res := h.run("runs")

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Contains(t, res.stdout, "Available Commands:")
	require.Contains(t, res.stdout, "wait")
}

func TestFlagsWinOverEnvironment(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{workerPages: map[string]*agentserverv1.ListWorkersResponse{"": {}}})
	h.env[EnvAddr] = "127.0.0.1:1" // nothing listens there
	h.env[EnvAPIKey] = "from-env"

	res := h.run("--addr", h.addr, "--api-key", "from-flag", "workers", "list")

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, "No workers.\n", res.stderr)
	require.Equal(t, []string{"Bearer from-flag"}, h.fake.auth(0))
}
