package scheduler_test

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/pkg/store"
	"github.com/agentserver/agentserver/services/scheduler/scheduler"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const flow = "executors:\n  - name: x\n    command: [\"true\"]\n"

const gib = int64(1) << 30

func startScheduler(t *testing.T, mods ...func(*scheduler.Config)) (*store.Store, string) {
	t.Helper()
	st, srv, _ := runScheduler(t, mods...)
	return st, srv.Addr().String()
}

// runScheduler starts a scheduler on a database of its own; stop ends its Run early.
func runScheduler(t *testing.T, mods ...func(*scheduler.Config)) (st *store.Store, srv *scheduler.Server, stop func()) {
	t.Helper()
	url := pgtest.NewDatabase(t)
	require.NoError(t, store.Migrate(t.Context(), url))
	st, err := store.Open(t.Context(), url)
	require.NoError(t, err)
	t.Cleanup(st.Close)
	cfg := scheduler.Defaults()
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.DatabaseURL = url
	cfg.PollInterval = 50 * time.Millisecond
	for _, mod := range mods {
		mod(&cfg)
	}
	srv, err = scheduler.New(cfg, st, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); require.NoError(t, <-done) }) }
	t.Cleanup(stop)
	return st, srv, stop
}

// standInWorker speaks the scheduler protocol like a worker-agent but executes nothing:
// it records the assignments it gets and reports results when told to. A test stand-in.
type standInWorker struct {
	stream     schedulerv1.SchedulerService_ConnectClient
	registered *schedulerv1.Registered
	mu         sync.Mutex
	got        []*schedulerv1.Assignment
	// acks are the results acknowledged, by ResultAck or ResultAcks; ackMessages counts
	// the messages of each kind ("single", "batched").
	acks        []*schedulerv1.ResultAck
	ackMessages map[string]int
	// end is why the session ended, once it has.
	end error
	// cancelled are the cancels received.
	cancelled []*schedulerv1.Cancel
}

func connectStandIn(t *testing.T, addr string, reg *schedulerv1.Register) *standInWorker {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return connectStandInOver(t, conn, reg)
}

// connectStandInOver opens the stand-in's session over conn.
func connectStandInOver(t *testing.T, conn grpc.ClientConnInterface, reg *schedulerv1.Register) *standInWorker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := schedulerv1.NewSchedulerServiceClient(conn).Connect(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Register{Register: reg}}))
	first, err := stream.Recv()
	require.NoError(t, err)
	require.NotNil(t, first.GetRegistered())
	w := &standInWorker{stream: stream, registered: first.GetRegistered(), ackMessages: map[string]int{}}
	go func() {
		for {
			m, err := stream.Recv()
			w.mu.Lock()
			if err != nil {
				w.end = err
				w.mu.Unlock()
				return
			}
			switch msg := m.GetMsg().(type) {
			case *schedulerv1.ConnectResponse_Assignment:
				w.got = append(w.got, msg.Assignment)
			case *schedulerv1.ConnectResponse_ResultAck:
				w.acks = append(w.acks, msg.ResultAck)
				w.ackMessages["single"]++
			case *schedulerv1.ConnectResponse_ResultAcks:
				w.acks = append(w.acks, msg.ResultAcks.GetAcks()...)
				w.ackMessages["batched"]++
			case *schedulerv1.ConnectResponse_Cancel:
				w.cancelled = append(w.cancelled, msg.Cancel)
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// acked returns the acknowledged results' runs and the ack messages by kind.
func (w *standInWorker) acked() ([]string, map[string]int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var runs []string
	for _, a := range w.acks {
		runs = append(runs, a.GetRun())
	}
	return runs, maps.Clone(w.ackMessages)
}

// ended returns why the session ended (nil while it lasts).
func (w *standInWorker) ended() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.end
}

func (w *standInWorker) cancels() []*schedulerv1.Cancel {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.cancelled)
}

func (w *standInWorker) assignments() []*schedulerv1.Assignment {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]*schedulerv1.Assignment(nil), w.got...)
}

func (w *standInWorker) succeed(t *testing.T, a *schedulerv1.Assignment) {
	t.Helper()
	require.NoError(t, w.stream.Send(&schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Result{Result: &schedulerv1.RunResult{
		Run: a.GetRun(), Epoch: a.GetEpoch(), Outcome: schedulerv1.RunResult_OUTCOME_SUCCEEDED, State: a.GetState(),
	}}}))
}

func slots(kv ...any) []*agentserverv1.SlotInventory {
	var out []*agentserverv1.SlotInventory
	for i := 0; i < len(kv); i += 2 {
		out = append(out, &agentserverv1.SlotInventory{Type: kv[i].(string), Total: int32(kv[i+1].(int))})
	}
	return out
}

func assistantOf(a *schedulerv1.Assignment) string { return a.GetAssistant() }

// Mixed CPU and GPU runs on mixed workers: a GPU run never lands on a CPU-only worker,
// GPU slots are never exceeded, and each GPU run goes to a GPU with enough free memory,
// or waits for one.
func TestTypedAndGPUMemoryAwarePlacement(t *testing.T) {
	st, addr := startScheduler(t)
	ctx := t.Context()
	for _, a := range []*store.Assistant{
		{ID: "cpu-agent", SlotType: "cpu"},
		{ID: "gpu-big", SlotType: "gpu", GPUMemoryBytes: 40 * gib},
		{ID: "gpu-small", SlotType: "gpu", GPUMemoryBytes: 8 * gib},
	} {
		a.TenantID, a.Flow = store.DefaultTenant, flow
		_, err := st.CreateAssistant(ctx, a)
		require.NoError(t, err)
	}
	var runs []store.NewRun
	for range 3 {
		runs = append(runs, store.NewRun{AssistantID: "gpu-big"}, store.NewRun{AssistantID: "gpu-small"})
	}
	for range 4 {
		runs = append(runs, store.NewRun{AssistantID: "cpu-agent"})
	}
	_, err := st.CreateRuns(ctx, store.DefaultTenant, runs, store.RunDefaults{MaxAttempts: 1, Timeout: time.Hour, MaxTimeout: time.Hour})
	require.NoError(t, err)

	cpuOnly := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "cpu-only", Pool: "cpu", Slots: slots("cpu", 2)})
	gpuWorker := connectStandIn(t, addr, &schedulerv1.Register{WorkerId: "gpu-worker", Pool: "gpu", Slots: slots("cpu", 1, "gpu", 2),
		Gpus: []*agentserverv1.Gpu{
			{Index: 0, Uuid: "GPU-big", MemoryTotalBytes: 80 * gib, MemoryUsedBytes: 2 * gib},
			{Index: 1, Uuid: "GPU-small", MemoryTotalBytes: 16 * gib, MemoryUsedBytes: 1 * gib},
		}})

	require.Eventually(t, func() bool {
		return len(cpuOnly.assignments()) == 2 && len(gpuWorker.assignments()) == 3
	}, 20*time.Second, 20*time.Millisecond, "cpu-only gets 2 cpu runs; the gpu worker 1 cpu run and one run per GPU")
	// Nothing more arrives while every slot is busy.
	require.Never(t, func() bool {
		return len(cpuOnly.assignments()) > 2 || len(gpuWorker.assignments()) > 3
	}, 500*time.Millisecond, 20*time.Millisecond)

	for _, a := range cpuOnly.assignments() {
		require.Equal(t, "assistants/cpu-agent", assistantOf(a), "no GPU run on a CPU-only worker")
		require.Empty(t, a.GetGpuUuid())
	}
	byGPU := map[string]*schedulerv1.Assignment{}
	for _, a := range gpuWorker.assignments() {
		if a.GetSlotType() == "gpu" {
			require.NotContains(t, byGPU, a.GetGpuUuid(), "one run per GPU")
			byGPU[a.GetGpuUuid()] = a
		} else {
			require.Equal(t, "assistants/cpu-agent", assistantOf(a))
		}
	}
	require.Len(t, byGPU, 2)
	// GPU-small has 15Gi free: only an 8Gi run fits. GPU-big (78Gi free) is filled first,
	// with the first run in line that fits.
	require.Equal(t, "assistants/gpu-small", assistantOf(byGPU["GPU-small"]))
	require.Equal(t, "assistants/gpu-big", assistantOf(byGPU["GPU-big"]))

	// Freeing GPU-small brings another small run there, never a big one.
	gpuWorker.succeed(t, byGPU["GPU-small"])
	require.Eventually(t, func() bool { return len(gpuWorker.assignments()) == 4 }, 20*time.Second, 20*time.Millisecond)
	last := gpuWorker.assignments()[3]
	require.Equal(t, "GPU-small", last.GetGpuUuid())
	require.Equal(t, "assistants/gpu-small", assistantOf(last))
}
