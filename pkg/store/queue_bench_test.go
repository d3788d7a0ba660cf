package store_test

import (
	"context"
	"flag"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/pkg/store"
)

// The hot paths of the queue against a real PostgreSQL (pgtest's, or
// AGENTSERVER_TEST_DATABASE_URL's):
//
//	go test -run '^$' -bench . ./store/                 # enqueue, claim+finish, claim with 0/10k/100k queued
//	go test -run '^$' -bench 'ClaimLatency/queued=1M' -benchtime 2000x ./store/  # 1,000,000 queued (~1.5 min to build)
//
// Give -benchtime as a count (e.g. 2000x): with a duration, go test calls each benchmark
// again with growing b.N and every call builds its queue anew.
//
// Each benchmark gets its own database. Figures are per operation; runs/s is reported where
// an operation handles several runs.

var benchRunDefaults = store.RunDefaults{MaxAttempts: 1, Timeout: time.Hour, MaxTimeout: 24 * time.Hour}

const benchAssistant = "bench"

// benchStore opens a migrated store on a fresh database with one cpu assistant.
func benchStore(b testing.TB) *store.Store {
	b.Helper()
	url := pgtest.NewDatabase(b)
	require.NoError(b, store.Migrate(b.Context(), url))
	st, err := store.Open(b.Context(), url)
	require.NoError(b, err)
	b.Cleanup(st.Close)
	_, err = st.CreateAssistant(b.Context(), &store.Assistant{
		TenantID: store.DefaultTenant, ID: benchAssistant, SlotType: "cpu",
		Flow: "executors:\n  - name: noop\n    command: [\"true\"]\n",
	})
	require.NoError(b, err)
	return st
}

func newRuns(n int) []store.NewRun { return runsOf(benchAssistant, n) }

// runsOf builds n runs of assistant, numbered by their input.
func runsOf(assistant string, n int) []store.NewRun {
	runs := make([]store.NewRun, n)
	for i := range runs {
		runs[i] = store.NewRun{AssistantID: assistant, Input: map[string]any{"i": i}}
	}
	return runs
}

// fillQueue queues n runs of the bench assistant with one INSERT … SELECT generate_series
// per table (about a minute and a half for a million on two cores, far less than CreateRuns
// would take), then vacuums and analyses so that the claim plans against settled statistics.
func fillQueue(b testing.TB, st *store.Store, n int) {
	b.Helper()
	fillQueueOf(b, st, benchAssistant, n)
}

// fillQueueOf is fillQueue for the runs of another assistant; they queue behind the runs
// already queued.
func fillQueueOf(b testing.TB, st *store.Store, assistant string, n int) {
	b.Helper()
	if n == 0 {
		return
	}
	ctx := b.Context()
	pool := st.Pool()
	_, err := pool.Exec(ctx, `
		INSERT INTO runs (id, tenant_id, assistant_id, assistant_version, seq, state, priority,
			slot_type, input, max_attempts, timeout_ms)
		SELECT gen_random_uuid(), $1, $2, 1, nextval('run_seq'), 1, 0, 'cpu', '{}', 1, 3600000
		FROM generate_series(1, $3)`, store.DefaultTenant, assistant, n)
	require.NoError(b, err)
	_, err = pool.Exec(ctx, `
		INSERT INTO run_queue (run_id, seq, tenant_id, assistant_id, slot_type, priority, limited)
		SELECT id, seq, tenant_id, assistant_id, slot_type, priority,
			EXISTS (SELECT 1 FROM assistant_load l WHERE l.tenant_id = r.tenant_id AND l.assistant_id = r.assistant_id)
		FROM runs r
		WHERE state = 1 AND assistant_id = $1 AND NOT EXISTS (SELECT 1 FROM run_queue q WHERE q.run_id = r.id)`, assistant)
	require.NoError(b, err)
	_, err = pool.Exec(ctx, `VACUUM ANALYZE runs, run_queue`)
	require.NoError(b, err)
}

func claimOne(ctx context.Context, b *testing.B, st *store.Store, limit int) []*store.Claim {
	claims, err := st.ClaimRuns(ctx, store.ClaimParams{WorkerID: "w1", SlotType: "cpu", Limit: limit, LeaseTTL: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	return claims
}

func finish(ctx context.Context, b *testing.B, st *store.Store, c *store.Claim) {
	if _, err := st.FinishRun(ctx, store.FinishParams{
		RunID: c.Run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeSucceeded, State: c.State,
	}); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkEnqueue measures CreateRuns: one run per call (alone and from 8 goroutines, the
// shape of concurrent CreateRun calls), 3 per call (the create batch of the sustained
// workload with 8 creators) and 1000 per call (BatchCreateRuns).
func BenchmarkEnqueue(b *testing.B) {
	b.Run("single", func(b *testing.B) {
		st := benchStore(b)
		one := newRuns(1)
		for b.Loop() {
			if _, err := st.CreateRuns(b.Context(), store.DefaultTenant, one, benchRunDefaults); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "runs/s")
	})
	b.Run("single-parallel8", func(b *testing.B) {
		st := benchStore(b)
		// RunParallel starts GOMAXPROCS × parallelism goroutines: 8 in all.
		b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			one := newRuns(1)
			for pb.Next() {
				if _, err := st.CreateRuns(context.Background(), store.DefaultTenant, one, benchRunDefaults); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "runs/s")
	})
	for _, n := range []int{3, 1000} {
		b.Run(fmt.Sprintf("batch%d", n), func(b *testing.B) {
			st := benchStore(b)
			batch := newRuns(n)
			for b.Loop() {
				if _, err := st.CreateRuns(b.Context(), store.DefaultTenant, batch, benchRunDefaults); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "runs/s")
		})
	}
}

// BenchmarkEnqueueOnThreads measures CreateRuns of runs on threads, batch runs per call
// (the gateway's create batches hold as many as calls were waiting), each on a thread of
// its own: idle threads (each run becomes its thread's active run and is queued) and busy
// ones (each run waits behind its thread's active run, multitask "enqueue").
func BenchmarkEnqueueOnThreads(b *testing.B) {
	for _, busy := range []bool{false, true} {
		for _, batch := range []int{1, 8} {
			name := fmt.Sprintf("idle/batch=%d", batch)
			if busy {
				name = fmt.Sprintf("busy/batch=%d", batch)
			}
			b.Run(name, func(b *testing.B) {
				st := benchStore(b)
				threads := batch
				if !busy {
					threads = b.N * batch // a fresh thread for every run
				}
				for i := range threads {
					_, err := st.CreateThread(b.Context(), store.DefaultTenant, fmt.Sprintf("t%d", i), nil, nil)
					require.NoError(b, err)
				}
				runs := newRuns(batch)
				if busy {
					for k := range runs {
						runs[k].ThreadID, runs[k].Multitask = fmt.Sprintf("t%d", k), store.MultitaskEnqueue
					}
					_, err := st.CreateRuns(b.Context(), store.DefaultTenant, runs, benchRunDefaults) // the active runs
					require.NoError(b, err)
				}
				b.ResetTimer()
				for i := range b.N {
					if !busy {
						for k := range runs {
							runs[k].ThreadID = fmt.Sprintf("t%d", i*batch+k)
						}
					}
					if _, err := st.CreateRuns(b.Context(), store.DefaultTenant, runs, benchRunDefaults); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "runs/s")
			})
		}
	}
}

// BenchmarkClaimFinish measures the scheduler's per-run database work: claim runs, then
// finish each, as one worker would, with claim batches of 1 and of 64 (64 free slots).
func BenchmarkClaimFinish(b *testing.B) {
	for _, limit := range []int{1, 64} {
		b.Run(fmt.Sprintf("limit=%d", limit), func(b *testing.B) {
			st := benchStore(b)
			ctx := b.Context()
			// Enough queued runs for every iteration; each iteration handles limit runs.
			fillQueue(b, st, b.N*limit)
			b.ResetTimer()
			handled := 0
			for range b.N {
				for _, c := range claimOne(ctx, b, st, limit) {
					finish(ctx, b, st, c)
					handled++
				}
			}
			b.StopTimer()
			require.Equal(b, b.N*limit, handled)
			b.ReportMetric(float64(handled)/b.Elapsed().Seconds(), "runs/s")
		})
	}
}

// BenchmarkFinishRuns measures FinishRuns of a batch of successes (the scheduler writes a
// worker's results in batches of up to 512): the cost per run should not grow with the
// batch. limited/… are runs of an assistant with a concurrency limit (claimed and finished
// with the load trigger counting them).
func BenchmarkFinishRuns(b *testing.B) {
	for _, tc := range []struct {
		name    string
		batch   int
		limited bool
	}{
		{"batch=4", 4, false}, {"batch=32", 32, false}, {"batch=128", 128, false}, {"batch=512", 512, false},
		{"limited/batch=4", 4, true}, {"limited/batch=32", 32, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			st := benchStore(b)
			ctx := b.Context()
			if tc.limited {
				_, err := st.UpdateAssistant(ctx, store.DefaultTenant, benchAssistant, func(a *store.Assistant) error {
					a.ConcurrencyLimit = 1_000_000
					return nil
				})
				require.NoError(b, err)
			}
			batch := tc.batch
			fillQueue(b, st, b.N*batch)
			var elapsed time.Duration
			for range b.N {
				claims := claimOne(ctx, b, st, batch)
				ps := make([]store.FinishParams, len(claims))
				for i, c := range claims {
					ps[i] = store.FinishParams{RunID: c.Run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeSucceeded, State: c.State,
						Events: []store.Event{{Type: "step_started", Data: map[string]any{"step": "noop"}}}}
				}
				start := time.Now()
				if _, _, err := st.FinishRuns(ctx, ps); err != nil {
					b.Fatal(err)
				}
				elapsed += time.Since(start)
			}
			b.ReportMetric(float64(elapsed.Microseconds())/float64(b.N*batch), "µs/run")
		})
	}
}

// BenchmarkClaimRuns measures ClaimRuns of a batch (the dispatcher claims for every slot a
// worker has free: a few runs under light load, hundreds in a burn-down): the cost per run
// should fall with the batch.
func BenchmarkClaimRuns(b *testing.B) {
	for _, batch := range []int{4, 32, 256} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			st := benchStore(b)
			ctx := b.Context()
			fillQueue(b, st, b.N*batch)
			b.ResetTimer()
			for range b.N {
				if n := len(claimOne(ctx, b, st, batch)); n != batch {
					b.Fatalf("claimed %d of a batch of %d from a full queue", n, batch)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*batch), "µs/run")
		})
	}
}

// BenchmarkClaimLatency measures one ClaimRuns call (limit 1) with a deep queue: the
// target is a flat line from 0 to 1,000,000 queued runs. queued=1M runs only when named
// (-bench 'ClaimLatency/queued=1M'): building it takes about a minute and a half.
func BenchmarkClaimLatency(b *testing.B) {
	atDepths(b, "queued", func(b *testing.B, st *store.Store, queued int) {
		ctx := b.Context()
		// b.N more than the depth, so the queue holds queued runs at the last claim.
		fillQueue(b, st, queued+b.N)
		b.ResetTimer()
		for range b.N {
			if len(claimOne(ctx, b, st, 1)) != 1 {
				b.Fatal("claimed nothing from a full queue")
			}
		}
	})
}

// BenchmarkClaimLatencyBehindLimit measures one ClaimRuns call (limit 1) when the head of
// the queue is a backlog of an assistant held at its concurrency limit (limit 1, one run
// RUNNING): the claim must reach the runs behind the backlog at a cost that does not grow
// with it. backlog=1M runs only when named, as in BenchmarkClaimLatency.
func BenchmarkClaimLatencyBehindLimit(b *testing.B) {
	atDepths(b, "backlog", func(b *testing.B, st *store.Store, backlog int) {
		ctx := b.Context()
		_, err := st.CreateAssistant(ctx, &store.Assistant{
			TenantID: store.DefaultTenant, ID: "held", SlotType: "cpu", ConcurrencyLimit: 1,
			Flow: "executors:\n  - name: noop\n    command: [\"true\"]\n",
		})
		require.NoError(b, err)
		fillQueueOf(b, st, "held", backlog+1)
		claims := claimOne(ctx, b, st, 1) // the held assistant's one run: now at its limit
		require.Len(b, claims, 1)
		require.Equal(b, "held", claims[0].Run.AssistantID)
		fillQueue(b, st, b.N)
		b.ResetTimer()
		for range b.N {
			claims := claimOne(ctx, b, st, 1)
			if len(claims) != 1 || claims[0].Run.AssistantID != benchAssistant {
				b.Fatalf("claimed %d runs behind the held backlog, want 1 of %s", len(claims), benchAssistant)
			}
		}
	})
}

// BenchmarkClaimAmongLimited measures one ClaimRuns call that takes a run of each of k
// assistants with a concurrency limit (a limit they do not reach): the claim locks the k
// load rows to admit them.
func BenchmarkClaimAmongLimited(b *testing.B) {
	for _, k := range []int{1, 20} {
		b.Run(fmt.Sprintf("assistants=%d", k), func(b *testing.B) {
			st := benchStore(b)
			ctx := b.Context()
			var batch []store.NewRun
			for i := range k {
				id := fmt.Sprintf("limited-%d", i)
				_, err := st.CreateAssistant(ctx, &store.Assistant{
					TenantID: store.DefaultTenant, ID: id, SlotType: "cpu", ConcurrencyLimit: 1_000_000,
					Flow: "executors:\n  - name: noop\n    command: [\"true\"]\n",
				})
				require.NoError(b, err)
				batch = append(batch, runsOf(id, 1)...)
			}
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				_, err := st.CreateRuns(ctx, store.DefaultTenant, batch, benchRunDefaults)
				require.NoError(b, err)
				b.StartTimer()
				if claims := claimOne(ctx, b, st, k); len(claims) != k {
					b.Fatalf("claimed %d runs, want %d", len(claims), k)
				}
			}
		})
	}
}

// atDepths runs bench as the sub-benchmarks name=0, 10k, 100k and 1M of b, each with a
// fresh store, the depth given; 1M only when -bench names it (building it takes about a
// minute and a half).
func atDepths(b *testing.B, name string, bench func(b *testing.B, st *store.Store, depth int)) {
	for _, tc := range []struct {
		name  string
		depth int
	}{
		{"0", 0}, {"10k", 10_000}, {"100k", 100_000}, {"1M", 1_000_000},
	} {
		b.Run(name+"="+tc.name, func(b *testing.B) {
			if tc.depth >= 1_000_000 && !benchNamed("1M") {
				b.Skipf("%s=1M runs only when -bench names it: -bench '%s/%s=1M'", name, b.Name()[:strings.Index(b.Name(), "/")], name)
			}
			bench(b, benchStore(b), tc.depth)
		})
	}
}

// benchNamed reports whether the -test.bench pattern names s literally, so that costly
// cases run only when asked for and never under -bench . .
func benchNamed(s string) bool {
	f := flag.Lookup("test.bench")
	return f != nil && strings.Contains(f.Value.String(), s)
}

// BenchmarkVacuumQueue measures one VacuumQueue after 2,000 runs were claimed (the
// scheduler's default interval) with the queue at each depth behind them.
func BenchmarkVacuumQueue(b *testing.B) {
	atDepths(b, "queued", func(b *testing.B, st *store.Store, queued int) {
		ctx := b.Context()
		noQueueAutovacuum(b, st)
		fillQueue(b, st, queued+2000*b.N)
		var elapsed time.Duration
		for range b.N {
			for claimed := 0; claimed < 2000; {
				claimed += len(claimOne(ctx, b, st, 500))
			}
			start := time.Now()
			require.NoError(b, st.VacuumQueue(ctx))
			elapsed += time.Since(start)
		}
		b.ReportMetric(float64(elapsed.Microseconds())/float64(b.N)/1000, "ms/vacuum")
	})
}

// BenchmarkClaimAndVacuum claims 20,000 runs in batches of 250 with the queue at each
// depth behind them, vacuuming the queue tables every `every` claimed runs: the cost per
// run of the claims and the vacuums together, for the scheduler's choice of interval.
func BenchmarkClaimAndVacuum(b *testing.B) {
	for _, every := range []int{2000, 50000} {
		b.Run(fmt.Sprintf("every=%d", every), func(b *testing.B) {
			atDepths(b, "queued", func(b *testing.B, st *store.Store, queued int) {
				ctx := b.Context()
				noQueueAutovacuum(b, st)
				const perIteration = 20000
				fillQueue(b, st, queued+perIteration*b.N)
				b.ResetTimer()
				sinceVacuum := 0
				for range b.N {
					for claimed := 0; claimed < perIteration; {
						n := len(claimOne(ctx, b, st, 250))
						claimed += n
						if sinceVacuum += n; sinceVacuum >= every {
							require.NoError(b, st.VacuumQueue(ctx))
							sinceVacuum = 0
						}
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*perIteration), "µs/run")
			})
		})
	}
}

// BenchmarkGroupedReads measures the gateway's grouped reads of runs (WaitRun, GetRun) and
// of their events (StreamRunEvents) for batches of 1 and 4 queued runs among 20,000, with
// statistics taken: a lone poller reads one, a few pollers a few. Their statements over
// arrays were planned afresh at every call for batches of fewer than ten runs.
func BenchmarkGroupedReads(b *testing.B) {
	st := benchStore(b)
	var runs []*store.Run
	for range 20 {
		created, err := st.CreateRuns(b.Context(), store.DefaultTenant, newRuns(1000), benchRunDefaults)
		require.NoError(b, err)
		runs = created
	}
	_, err := st.Pool().Exec(b.Context(), `ANALYZE runs`)
	require.NoError(b, err)
	for _, n := range []int{1, 4} {
		keys := make([]store.RunKey, n)
		after := make([]store.RunEventsAfter, n)
		for i, r := range runs[:n] {
			keys[i] = store.RunKey{Tenant: store.DefaultTenant, ID: r.ID}
			after[i] = store.RunEventsAfter{Tenant: store.DefaultTenant, ID: r.ID}
		}
		b.Run(fmt.Sprintf("GetRuns/n=%d", n), func(b *testing.B) {
			for b.Loop() {
				if got, err := st.GetRuns(b.Context(), keys); err != nil || len(got) != n {
					b.Fatal(got, err)
				}
			}
		})
		b.Run(fmt.Sprintf("ListEventsOfRuns/n=%d", n), func(b *testing.B) {
			for b.Loop() {
				if got, err := st.ListEventsOfRuns(b.Context(), after, 500); err != nil || len(got) != n || len(got[n-1]) != 1 {
					b.Fatal(got, err)
				}
			}
		})
	}
}
