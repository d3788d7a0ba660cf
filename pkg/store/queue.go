package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/agentserver/agentserver/pkg/jsonenc"
)

// Claim is a run handed to a worker: the run, the flow of its assistant version and the
// state to start from.
type Claim struct {
	// Run is the claimed run as far as executing and ordering it needs: tenant, id,
	// assistant and version, thread, state (RUNNING), priority, slot type, attempt and max
	// attempts, timeout, epoch, worker and step. Its other fields (input, output, times, …)
	// are not read and stay zero: GetRun has them.
	Run *Run
	// Flow is the flow YAML of the run's assistant version.
	Flow string
	// Config is the assistant version's config.
	Config map[string]any
	// State is the state to start from: the last checkpoint, else the input.
	State map[string]any
	// Step is the step to start at; empty means the first.
	Step string
	// Resume is the answer for the interrupted step (JSON), nil when not resuming.
	Resume json.RawMessage
}

// ClaimParams says what to claim.
type ClaimParams struct {
	// WorkerID becomes the lease owner.
	WorkerID string
	// SlotType of the runs to claim.
	SlotType string
	// Limit is the number of free slots: at most this many runs are claimed.
	Limit int
	// LeaseTTL is how long the lease lasts unless renewed.
	LeaseTTL time.Duration
	// MaxGPUMemory, when set, claims only runs needing at most that much free GPU memory
	// (the free memory of the GPU being filled).
	MaxGPUMemory *int64
}

// ClaimRuns claims up to p.Limit runnable runs of p.SlotType for a worker, in priority
// then submission order, and gives each a lease with a new fencing epoch. Runs of
// assistants at their concurrency limit are skipped; the limit holds with any number of
// concurrent claimers. Rows locked by a concurrent claimer are skipped, never waited for.
func (s *Store) ClaimRuns(ctx context.Context, p ClaimParams) ([]*Claim, error) {
	if p.Limit <= 0 {
		return nil, nil
	}
	if claims, ok, err := s.claimFast(ctx, p); err != nil {
		return nil, fmt.Errorf("claiming %s runs for worker %s: %w", p.SlotType, p.WorkerID, err)
	} else if ok {
		return claims, nil
	}
	// A candidate scan sees the load of the limited assistants as of its snapshot: a claim
	// that commits meanwhile can fill an assistant whose runs the scan then chose, and
	// the admission (which locks the load rows and reads them current) drops them. A claim
	// that got nothing scans once more, with a fresh snapshot that skips the now saturated
	// assistant and reaches the runs behind it: under load a claimer could otherwise come
	// back empty while other assistants' runs wait. (It cannot tell that case from an
	// empty queue: an empty claim costs a second statement.)
	claims, err := s.claimLimited(ctx, p)
	if err == nil && len(claims) == 0 {
		claims, err = s.claimLimited(ctx, p)
	}
	if err != nil {
		return nil, fmt.Errorf("claiming %s runs for worker %s: %w", p.SlotType, p.WorkerID, err)
	}
	return claims, nil
}

// claimLimited claims up to p.Limit runs in one statement when some assistant has a
// concurrency limit: the candidates (migration 15's function walks run_queue_claim in
// order for the runs of assistants without a limit, and takes from run_queue_limited, per
// limited assistant, at most what its limit allows: a saturated assistant's backlog is not
// read; its plans are pinned to those ordered index scans), then the admission — the load
// rows of the limited assistants among them locked in key order (loadsLock) and read
// current, and each assistant's candidates admitted in claim order up to limit - running
// (an assistant whose load row is gone lost its limit meanwhile: all admitted) — then the
// claim of the admitted runs. It was a transaction of five round trips or more (a lock
// statement per limited assistant until the twenty-fourth pass of docs/performance-history.md).
func (s *Store) claimLimited(ctx context.Context, p ClaimParams) ([]*Claim, error) {
	rows, err := s.hot.Query(ctx, claimLimitedStatement, p.SlotType, p.WorkerID, p.LeaseTTL.Milliseconds(), p.Limit, p.MaxGPUMemory)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanClaim)
}

// claimLimitedStatement is claimLimited's statement ($1 slot type, $2 worker, $3 lease in
// milliseconds, $4 limit, $5 most GPU memory).
var claimLimitedStatement = claimStatement(`cand AS MATERIALIZED (
			SELECT c.run_id, c.tenant_id, c.assistant_id, c.limited, row_number() OVER () AS ord
			FROM agentserver_claim_candidates_limited($1, $4, $5) AS c
		), lk AS MATERIALIZED (
			`+loadsLock(`SELECT DISTINCT c.tenant_id, c.assistant_id FROM cand c WHERE c.limited ORDER BY 1, 2`)+`
		), adm AS MATERIALIZED (
			SELECT c.run_id FROM (
				SELECT c.*, row_number() OVER (PARTITION BY c.tenant_id, c.assistant_id ORDER BY c.ord) AS n FROM cand c
			) c LEFT JOIN lk ON lk.tenant_id = c.tenant_id AND lk.assistant_id = c.assistant_id
			WHERE NOT c.limited OR lk.tenant_id IS NULL OR c.n <= lk.concurrency_limit - lk.running
		),`, "ANY(ARRAY(SELECT run_id FROM adm))", "coalesce(r.id = ANY(ARRAY(SELECT run_id FROM cand WHERE limited)), false)")

// vacuumQueue is VacuumQueue's statement.
const vacuumQueue = `VACUUM (SKIP_LOCKED, PARALLEL 0) run_queue, run_leases`

// VacuumQueue vacuums run_queue and run_leases, the two tables every claim and completion
// rewrites (a row in and out per run), skipping a table another vacuum is working on.
//
// A claim walks run_queue_claim from its head, where the entries of the runs claimed
// since the last vacuum lie dead: each claim read past all of them (after 300,000 claims
// a claim of 34 read 1,693 index pages, 7.6 ms; after VACUUM 5 pages, 0.25 ms). Autovacuum
// looks at a database once per autovacuum_naptime (one minute by default), while a busy
// scheduler claims thousands of runs a second; schedulers therefore vacuum after every
// few thousand claims (scheduler.Config.QueueVacuumRuns). Vacuuming a table one does not
// own is skipped by PostgreSQL with a warning, leaving it to autovacuum. Neither table is
// truncated (migration 13): that lock would stop every claim and completion.
//
// Nor does it start parallel workers (PARALLEL 0). Once an index of run_queue passes
// min_parallel_index_scan_size (a backlog of some tens of thousands of runs) PostgreSQL
// starts two background workers for every vacuum to clean up the indexes, which cost
// more than the work they share: with 150,000 queued, 18–33 ms per vacuum against 2–8 ms
// without, the workers' own CPU not counted.
func (s *Store) VacuumQueue(ctx context.Context) error {
	if _, err := s.pool.Exec(ctx, vacuumQueue); err != nil {
		return fmt.Errorf("vacuuming run_queue and run_leases: %w", err)
	}
	return nil
}

// claimStatement is the statement that turns chosen queue rows into claims: it deletes the
// queue rows, gives the runs their lease and a new epoch, logs the transition (on the run,
// migration 12) and returns the claims. ids is an `ANY(…)` expression of the chosen run
// ids; $2 is the worker, $3 the lease in milliseconds. cte, when set, is a leading CTE
// (ending with a comma) that ids may refer to.
//
// Rows are matched with `= ANY(array)`, never `IN (subquery)`: an index probe per id
// whatever the statistics say. With statistics taken while the queue was empty the planner
// ran `IN (SELECT … FROM cand)` as a nested loop over every queued row (33 ms per claim of
// 30 runs with 3,500 queued).
func claimStatement(cte, ids, limited string) string {
	match := "= " + ids
	return `
		WITH ` + cte + ` d AS (
			DELETE FROM run_queue WHERE run_id ` + match + ` RETURNING run_id
		), u AS (
			UPDATE runs r SET state = 2, epoch = r.epoch + 1, worker_id = $2, claim_time = now(),
				start_time = coalesce(r.start_time, now()), next_attempt_time = NULL,
				limited = ` + limited + `,
				-- The claim's RUNNING event, kept on the run (migration 12): its seq here,
				-- its data made from the run's worker, attempt and epoch when read
				-- (runningEvent, migration 14). A run claimed before had its previous
				-- one written out when it was queued again.
				running_seq = nextval('run_events_seq_seq')
			-- The runs whose queue rows d deleted, not every candidate: the candidate
			-- scan is a volatile function, whose queries see what committed after this
			-- statement's snapshot, and d (of this snapshot) cannot delete a queue row
			-- newer than it (a run a result promoted on its thread meanwhile). Updating
			-- every candidate claimed such a run and left its queue row behind; the next
			-- claim chose that row, and its update of the run, RUNNING by then, waited
			-- for the first claim and then locked the run without claiming it: a finish
			-- of the run waited for that claim, which waited for a thread (locked by a
			-- create waiting for the finish's threads): a deadlock (about one run of
			-- TestClaimsAndThreadCreatesDoNotDeadlock in 30). A candidate left alone stays
			-- queued; its queue row is unlocked when this statement ends.
			-- By id (an index probe each), not by joining d: the planner cannot estimate
			-- d's rows and would hash-join a scan of all runs.
			-- Only a QUEUED run is claimed: a queue row left behind by a run that ended
			-- meanwhile (cancelled as it was promoted on its thread) is just deleted.
			WHERE r.id = ANY(ARRAY(SELECT run_id FROM d)) AND r.state = 1
			-- Only the columns read below: the whole row (36 columns, its input among
			-- them) kept for every claimed run cost ~7 % of a claim of 240 runs.
			RETURNING r.tenant_id, r.id, r.assistant_id, r.assistant_version, r.thread_id, r.state,
				r.priority, r.seq, r.slot_type, r.attempt, r.max_attempts, r.timeout_ms, r.epoch,
				r.worker_id, r.next_step, r.checkpoint, r.input, r.resume, r.cancel_requested
		), l AS (
			-- cancel_requested is false here as long as a run asked to cancel never runs
			-- again (migration 24); copied all the same, so that no lease can miss one.
			-- deadline_time is the run's claim_time + timeout (migration 25): now() is
			-- the transaction's start, the claim_time set above.
			INSERT INTO run_leases (run_id, epoch, worker_id, tenant_id, assistant_id, slot_type, expire_time,
				cancel_requested, deadline_time)
			SELECT id, epoch, worker_id, tenant_id, assistant_id, slot_type, now() + $3 * interval '1 millisecond',
				cancel_requested, now() + timeout_ms * interval '1 millisecond'
			FROM u
		), t AS MATERIALIZED (
			-- The threads' states are read locked, which reads their latest committed
			-- versions, and keeps them until the claim commits: a state written after
			-- this statement's snapshot (by a write of the thread itself) is the one the
			-- run starts from.
			-- Locked in (tenant, id) order, as creates lock them (lockThreads): in another
			-- order a claim and a create deadlocked on two threads (a second lost each time).
			` + lockThreads(`SELECT DISTINCT tenant_id, thread_id FROM u WHERE thread_id IS NOT NULL ORDER BY tenant_id, thread_id`,
		"SHARE", "th.tenant_id, th.id, th.state") + `
		)
		SELECT u.tenant_id, u.id, u.assistant_id, u.assistant_version, coalesce(u.thread_id, ''), u.state,
			u.priority, u.slot_type, u.attempt, u.max_attempts, u.timeout_ms, u.epoch, coalesce(u.worker_id, ''),
			coalesce(u.next_step, ''), v.flow, v.config,
			coalesce(u.checkpoint, CASE WHEN t.id IS NOT NULL THEN t.state || u.input END, u.input), u.resume
		FROM u JOIN assistant_versions v
			ON v.tenant_id = u.tenant_id AND v.assistant_id = u.assistant_id AND v.version = u.assistant_version
		LEFT JOIN t ON t.tenant_id = u.tenant_id AND t.id = u.thread_id
		ORDER BY u.priority DESC, u.seq`
}

// enqueue is the INSERT that gives the runs of the row source src (a table or CTE with
// runs' columns; the caller may append a WHERE clause) their queue rows, claimable from
// available. Every statement that queues a run uses it (the trigger that promotes a
// thread's next run, in SQL, does the same), so that each row gets its mark: whether its
// assistant has a concurrency limit now (an assistant_load row). The mark puts the row in
// run_queue_limited instead of run_queue_claim (migration 15), so that a backlog held by a
// limit is not read by every claim. It only steers the plan: a row carrying a stale mark
// is still claimed correctly (see agentserver_claim_candidates_limited).
func enqueue(src, available string) string {
	return `INSERT INTO run_queue (run_id, seq, tenant_id, assistant_id, slot_type, priority, available_time, limited)
		SELECT id, seq, tenant_id, assistant_id, slot_type, priority, ` + available + `,
			EXISTS (SELECT 1 FROM assistant_load l
				WHERE l.tenant_id = ` + src + `.tenant_id AND l.assistant_id = ` + src + `.assistant_id)
		FROM ` + src
}

// noLimits is true when no assistant has a concurrency limit and no queued row is marked
// limited: every queued run is then in run_queue_claim and none needs admission. The
// marked rows are probed with an ordered LIMIT 1, which only run_queue_limited serves
// cheaply: as `EXISTS (… WHERE limited)` the planner could take a sequential scan, cheap
// to the first row while most rows were marked (statistics of a held backlog), and keep
// it once none were, reading the whole queue at every claim.
const noLimits = `NOT EXISTS (SELECT 1 FROM assistant_load)
	AND (SELECT q.tenant_id FROM run_queue q WHERE q.limited ORDER BY q.tenant_id, q.assistant_id LIMIT 1) IS NULL`

// claimFast claims in one statement (one round trip, no explicit transaction) when no
// assistant has a concurrency limit and no queued row is marked limited, the common case.
// It returns ok=false, having written nothing, otherwise: the caller then takes the
// two-step path.
func (s *Store) claimFast(ctx context.Context, p ClaimParams) (claims []*Claim, ok bool, err error) {
	// agentserver_claim_candidates (migration 8) is the ordered, locking scan of the
	// queue with its plan pinned; the one-time filter skips it when limits exist.
	rows, err := s.hot.Query(ctx, claimStatement(`cand AS (
			SELECT c.run_id FROM agentserver_claim_candidates($1, $4, $5) AS c(run_id)
			WHERE `+noLimits+`
		),`, "ANY(ARRAY(SELECT run_id FROM cand))", "false"),
		p.SlotType, p.WorkerID, p.LeaseTTL.Milliseconds(), p.Limit, p.MaxGPUMemory)
	if err != nil {
		return nil, false, err
	}
	if claims, err = collect(rows, scanClaim); err != nil {
		return nil, false, err
	}
	if len(claims) > 0 {
		return claims, true, nil
	}
	// Nothing claimed: an empty queue, or limits exist and the fast path stood aside.
	var none bool
	if err := s.hot.QueryRow(ctx, `SELECT `+noLimits).Scan(&none); err != nil {
		return nil, false, err
	}
	return nil, none, nil
}

// loadsLock locks the load rows of the assistants keys names (a query of (tenant_id,
// assistant_id), distinct and in that order) in keys' order, as every writer of those
// rows orders them (in the database: a sort in Go, by bytes, would disagree with a
// collation other than C), one index probe each, and returns each one's row; an assistant
// without a load row is absent.
func loadsLock(keys string) string {
	return `SELECT l.tenant_id, l.assistant_id, l.running, l.concurrency_limit FROM (` + keys + `) k
		CROSS JOIN LATERAL (
			SELECT a.tenant_id, a.assistant_id, a.running, a.concurrency_limit FROM assistant_load a
			WHERE a.tenant_id = k.tenant_id AND a.assistant_id = k.assistant_id
			FOR UPDATE
		) l`
}

// scanClaim reads a row of claimStatement: the columns of Claim.Run it fills, then the
// flow, config, state to start from (checkpoint, else the thread's state merged with the
// input, else the input) and resume value. (Every column of the run, as scanRun reads
// them, was ~5 % of the all-in-one server's CPU in a burn-down.)
func scanClaim(row pgx.Row) (*Claim, error) {
	c := Claim{Run: &Run{}}
	r := c.Run
	var timeoutMS int64
	var config, state []byte
	if err := row.Scan(&r.TenantID, &r.ID, &r.AssistantID, &r.AssistantVersion, &r.ThreadID, &r.State,
		&r.Priority, &r.SlotType, &r.Attempt, &r.MaxAttempts, &timeoutMS, &r.Epoch, &r.WorkerID,
		&r.Step, &c.Flow, &config, &state, &c.Resume); err != nil {
		return nil, err
	}
	r.Timeout = time.Duration(timeoutMS) * time.Millisecond
	c.Step = r.Step
	if err := decodeObject(config, &c.Config); err != nil {
		return nil, fmt.Errorf("decoding assistant config: %w", err)
	}
	if err := decodeObject(state, &c.State); err != nil {
		return nil, fmt.Errorf("decoding the state to start from: %w", err)
	}
	return &c, nil
}

// decodeObject decodes a jsonb object into dst as json.Unmarshal does; the empty object,
// what most runs start from and most assistants are configured with, without the decoder.
func decodeObject(b []byte, dst *map[string]any) error {
	if string(b) == "{}" {
		*dst = map[string]any{}
		return nil
	}
	return json.Unmarshal(b, dst)
}

// RenewLeases extends the leases of the given claims, by worker id: a lease is renewed
// only while its run is RUNNING under that very epoch and owned by that worker. It returns
// the leases it renewed.
//
// Renewal names the claims a live session is known to hold, never "every run of this
// worker": a claim whose assignment never reached the worker (lost with a broken stream,
// or made through a session that is gone) must expire and be requeued even though the
// worker is alive and heartbeating elsewhere, or its run would stay RUNNING with nobody
// executing it.
func (s *Store) RenewLeases(ctx context.Context, held map[string][]Lease, ttl time.Duration) ([]Lease, error) {
	var ids []uuid.UUID
	var epochs []int64
	var workers []string
	for w, leases := range held {
		for _, l := range leases {
			ids = append(ids, l.RunID)
			epochs = append(epochs, l.Epoch)
			workers = append(workers, w)
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	// A run_leases row exists exactly while its run is RUNNING under that epoch.
	rows, err := s.hot.Query(ctx, `UPDATE run_leases l SET expire_time = now() + $4 * interval '1 millisecond'
		FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS h(id, epoch, worker_id)
		WHERE l.run_id = h.id AND l.epoch = h.epoch AND l.worker_id = h.worker_id
		RETURNING l.run_id, l.epoch`, ids, epochs, workers, ttl.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("renewing leases: %w", err)
	}
	leases, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Lease, error) {
		var l Lease
		err := row.Scan(&l.RunID, &l.Epoch)
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("renewing leases: %w", err)
	}
	return leases, nil
}

// Outcome is how a run's execution ended on its worker.
type Outcome int

// Outcomes of an execution.
const (
	OutcomeSucceeded Outcome = iota + 1
	OutcomeFailed
	OutcomeCancelled
	OutcomeTimedOut
	// OutcomeReleased hands the run back unfinished (drain): it is queued again without
	// using an attempt.
	OutcomeReleased
	// OutcomeInterrupted parks the run until a client resumes it.
	OutcomeInterrupted
)

// FinishParams reports the end of an execution.
type FinishParams struct {
	RunID   uuid.UUID
	Epoch   int64
	Outcome Outcome
	// State is the final state (SUCCEEDED) or the state to keep.
	State map[string]any
	Error string
	// Retryable lets a failure be retried while attempts remain.
	Retryable bool
	// RetryDelay is the backoff before the next attempt of a retried failure.
	RetryDelay time.Duration
	// Step is the step an interrupted run resumes at.
	Step string
	// Prompt is what an interrupted step asks; it goes into the run's event log.
	Prompt any
	// Events are events the worker reported for this claim just before its result: they
	// are written, in order, before the run's state event, under the same fence (refused
	// with the result when the claim is stale).
	Events []Event
	// OnThread is a hint: the run is on a thread, as its claim said. A success hinted so
	// is ended by the statement for runs on threads first; a wrong hint costs a statement,
	// never an outcome.
	OnThread bool
}

// plainSuccess reports whether p is a success without an error message: the results
// finishSucceeded writes when their runs are neither on a thread nor limited.
func (p FinishParams) plainSuccess() bool { return p.Outcome == OutcomeSucceeded && p.Error == "" }

// Event is one entry for a run's event log.
type Event struct {
	Type string
	Data map[string]any
}

// FinishResult says what became of the run.
type FinishResult struct {
	State RunState
	// Retried is true when a failure was queued for another attempt.
	Retried bool
}

// FinishRun records the end of an execution, fenced by the claim's epoch: it returns
// ErrStaleEpoch, and writes nothing, unless the run is RUNNING under that very epoch.
// A retryable failure with attempts left is queued again after RetryDelay.
func (s *Store) FinishRun(ctx context.Context, p FinishParams) (FinishResult, error) {
	res, errs, err := s.FinishRuns(ctx, []FinishParams{p})
	if err != nil {
		return FinishResult{}, err
	}
	return res[0], errs[0]
}

// FinishRuns records the ends of several executions together (group commit), each fenced
// like FinishRun: errs[i] is ErrStaleEpoch where item i was refused. Successes of runs
// neither on a thread nor limited are written by one statement, the rest by one
// transaction. err is set when a write fails; what that write held is not written, and a
// caller that sends the whole batch again gets ErrStaleEpoch for the items already ended.
type finishRow struct {
	i                    int
	attempt, maxAttempts int32
	cancelRequested      bool
	tenant, assistant    string
	thread               string
	limited              bool
}

// finishThreadsLock locks the threads of the runs $1 (lockThreads), for the writes of a
// finish, whose triggers update them.
var finishThreadsLock = lockThreads(threadsOfRuns("$1"), "NO KEY UPDATE", "1")

// finishLoadsLock locks the load rows of the assistants of the limited runs among $1
// (loadsLock, as claims lock them): the writes of a finish fire the load trigger, which
// updates them.
var finishLoadsLock = loadsLock(`SELECT DISTINCT x.tenant_id, x.assistant_id FROM runs x
	WHERE x.id = ANY($1) AND x.limited ORDER BY 1, 2`)

func (s *Store) FinishRuns(ctx context.Context, ps []FinishParams) ([]FinishResult, []error, error) {
	res := make([]FinishResult, len(ps))
	errs := make([]error, len(ps))
	// Encoded once for both paths (and for a retried transaction): each item's state and
	// the data of each of its events.
	states := make([][]byte, len(ps))
	events := make([][][]byte, len(ps))
	for i, p := range ps {
		if p.State != nil {
			var err error
			if states[i], err = jsonenc.Marshal(p.State); err != nil {
				return nil, nil, fmt.Errorf("encoding state of run %s: %w", p.RunID, err)
			}
		}
		for _, e := range p.Events {
			b, err := jsonenc.Marshal(e.Data)
			if err != nil {
				return nil, nil, fmt.Errorf("encoding event of run %s: %w", p.RunID, err)
			}
			events[i] = append(events[i], b)
		}
	}
	// Lock the runs in id order, every batch the same way.
	order := make([]int, len(ps))
	for i := range order {
		order[i] = i
	}
	// Stable: of the copies of one result, the first (which carries its events) is kept.
	sort.SliceStable(order, func(a, b int) bool { return bytes.Compare(ps[order[a]].RunID[:], ps[order[b]].RunID[:]) < 0 })
	// A claim appears once per transaction: a worker that resends an unacknowledged
	// result can put the same result twice in one batch, and both copies would see the
	// run still RUNNING. The later copies are refused like any stale write. (Results of
	// different claims of one run cannot both match the run's epoch, so they need no
	// such care.)
	seen := make(map[Lease]bool, len(ps))
	unique := order[:0]
	for _, i := range order {
		l := Lease{RunID: ps[i].RunID, Epoch: ps[i].Epoch}
		if seen[l] {
			errs[i] = ErrStaleEpoch
			continue
		}
		seen[l] = true
		unique = append(unique, i)
	}
	order = unique
	order, err := s.finishSucceeded(ctx, ps, states, events, order, res)
	if err != nil {
		return nil, nil, fmt.Errorf("finishing %d runs: %w", len(ps), err)
	}
	if len(order) == 0 {
		return res, errs, nil
	}
	// Two batches that end runs of the same limited assistants or threads in another order
	// can deadlock on those rows; the loser is rolled back whole and retried (only this
	// transaction: the successes written above stay written).
	err = s.retryDeadlock(func() error { return s.finishLocked(ctx, ps, states, events, order, res, errs) })
	if err != nil {
		return nil, nil, fmt.Errorf("finishing %d runs: %w", len(ps), err)
	}
	return res, errs, nil
}

// finishLocked ends ps[order] in one transaction: it locks the runs in id order, marks
// the stale claims in errs, and writes each run's events and end in (assistant, thread)
// order.
func (s *Store) finishLocked(ctx context.Context, ps []FinishParams, states [][]byte, events [][][]byte, order []int, res []FinishResult, errs []error) error {
	return pgx.BeginFunc(ctx, s.hot, func(tx pgx.Tx) error {
		lock := &pgx.Batch{}
		for _, i := range order {
			lock.Queue(`SELECT attempt, max_attempts, cancel_requested, tenant_id, assistant_id, coalesce(thread_id, ''), limited
				FROM runs WHERE id = $1 AND epoch = $2 AND state = 2 FOR UPDATE`, ps[i].RunID, ps[i].Epoch)
		}
		br := tx.SendBatch(ctx, lock)
		var rows []finishRow
		for _, i := range order {
			r := finishRow{i: i}
			err := br.QueryRow().Scan(&r.attempt, &r.maxAttempts, &r.cancelRequested, &r.tenant, &r.assistant, &r.thread, &r.limited)
			if errors.Is(err, pgx.ErrNoRows) {
				errs[i] = ErrStaleEpoch
				continue
			}
			if err != nil {
				br.Close()
				return err
			}
			rows = append(rows, r)
		}
		if err := br.Close(); err != nil {
			return err
		}
		// Writes in (assistant, thread) order: the triggers they fire lock those rows.
		sort.SliceStable(rows, func(a, b int) bool {
			if rows[a].assistant != rows[b].assistant {
				return rows[a].assistant < rows[b].assistant
			}
			return rows[a].thread < rows[b].thread
		})
		write := &pgx.Batch{}
		// The runs' threads first, all of them in (tenant, id) order, as creates and claims
		// lock threads: left to the triggers, they were locked in the writes' (assistant,
		// thread) order, and a finish of runs of two assistants deadlocked with a create
		// naming their threads (ten times in 10 s, a second each).
		// Then the load rows of the limited runs' assistants, in the database's key order
		// as claims and the successes' statement lock them (left to the triggers, in the
		// writes' order, sorted here by bytes, which a collation other than C orders
		// otherwise).
		var onThreads, limited []uuid.UUID
		for _, r := range rows {
			if r.thread != "" {
				onThreads = append(onThreads, ps[r.i].RunID)
			}
			if r.limited {
				limited = append(limited, ps[r.i].RunID)
			}
		}
		if len(onThreads) > 0 {
			write.Queue(finishThreadsLock, onThreads)
		}
		if len(limited) > 0 {
			write.Queue(finishLoadsLock, limited)
		}
		for _, r := range rows {
			for k, e := range ps[r.i].Events {
				write.Queue(`INSERT INTO run_events (run_id, tenant_id, type, data) VALUES ($1, $2, $3, $4)`,
					ps[r.i].RunID, r.tenant, e.Type, events[r.i][k])
			}
			if err := queueFinish(write, ps[r.i], states[r.i], r, &res[r.i]); err != nil {
				return err
			}
		}
		return tx.SendBatch(ctx, write).Close()
	})
}

// The kinds of successful runs finishSucceeded ends, each in a statement of its own.
const (
	// successPlain: not on a thread, claimed without a concurrency limit (no trigger).
	successPlain = iota
	// successLimited: not on a thread, claimed under a limit (the load trigger).
	successLimited
	// successOnThread: on a thread, claimed without a limit (the thread's trigger).
	successOnThread
	successKinds
)

// finishSucceeded ends the successful runs among ps[order], each kind in one statement
// (one round trip, its own transaction): first the runs claimed without a concurrency
// limit and not on a thread, the common case, which fire no trigger; then, while any
// success is left, those claimed under a limit, then those on threads. It returns the
// indexes it did not finish (other outcomes, runs on threads claimed under a limit, and
// stale claims), which take the general path.
//
// When every success left is hinted to be on a thread (FinishParams.OnThread), the
// statement for runs on threads goes first: the other two would end none of them.
func (s *Store) finishSucceeded(ctx context.Context, ps []FinishParams, states [][]byte, events [][][]byte, order []int, res []FinishResult) ([]int, error) {
	rest := order
	var tried [successKinds]bool
	for {
		successes, onThreads := 0, 0
		for _, i := range rest {
			if ps[i].plainSuccess() {
				successes++
				if ps[i].OnThread {
					onThreads++
				}
			}
		}
		kind := slices.Index(tried[:], false)
		if successes > 0 && onThreads == successes && !tried[successOnThread] {
			kind = successOnThread
		}
		if successes == 0 || kind < 0 {
			return rest, nil
		}
		tried[kind] = true
		var err error
		if rest, err = s.finishSuccesses(ctx, ps, states, events, rest, res, kind); err != nil {
			return nil, err
		}
	}
}

// finishSuccesses is one statement of finishSucceeded: it ends the plain successes among
// ps[order] of runs of one kind (successPlain, successLimited, successOnThread).
func (s *Store) finishSuccesses(ctx context.Context, ps []FinishParams, states [][]byte, events [][][]byte, order []int, res []FinishResult, kind int) ([]int, error) {
	var ids []uuid.UUID
	var epochs []int64
	var outputs [][]byte
	var evRuns []uuid.UUID
	var evTypes []string
	var evData [][]byte
	var steps []string
	// Each run once: the statement finds a run's epoch, output and kept step by the run's
	// position in ids, by binary search (ids ascend, as order does: FinishRuns sorts it
	// by id, bytewise, as PostgreSQL compares uuids). A second claim of the same run in
	// this batch (results of an old and a new claim) takes the general path.
	taken := make(map[uuid.UUID]bool, len(order))
	for _, i := range order {
		if ps[i].plainSuccess() && !taken[ps[i].RunID] {
			taken[ps[i].RunID] = true
			ids = append(ids, ps[i].RunID)
			epochs = append(epochs, ps[i].Epoch)
			outputs = append(outputs, states[i])
			step := keptStep(ps[i].Events)
			steps = append(steps, step)
			if step != "" {
				continue // kept on the run
			}
			for k, e := range ps[i].Events {
				evRuns, evTypes, evData = append(evRuns, ps[i].RunID), append(evTypes, e.Type), append(evData, events[i][k])
			}
		}
	}
	if len(ids) == 0 {
		return order, nil
	}
	stmt, args := finishSuccess[kind][0], []any{ids, epochs, outputs, steps}
	if len(evRuns) > 0 {
		stmt, args = finishSuccess[kind][1], []any{ids, epochs, outputs, evRuns, evTypes, evData, steps}
	}
	var done []uuid.UUID
	err := s.retryDeadlock(func() error {
		rows, err := s.hot.Query(ctx, stmt, args...)
		if err != nil {
			return err
		}
		done, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(done) == 0 {
		return order, nil
	}
	finished := make(map[uuid.UUID]bool, len(done))
	for _, id := range done {
		finished[id] = true
	}
	rest := order[:0:0]
	for _, i := range order {
		// The statement had each run once, under the epoch of its first entry here: a
		// finished id is that entry's. Other entries of the run (another claim's result)
		// take the general path, which refuses them as stale.
		if ps[i].plainSuccess() && finished[ps[i].RunID] {
			res[i].State = StateSucceeded
			delete(finished, ps[i].RunID)
			continue
		}
		rest = append(rest, i)
	}
	return rest, nil
}

// keptStep returns the step of a result's events when they are just that step's
// step_started event, {"step": name}, as the worker sends it: the one-statement finish
// keeps that event on the run (migration 21) instead of writing a row. Otherwise "".
func keptStep(events []Event) string {
	if len(events) != 1 || events[0].Type != "step_started" || len(events[0].Data) != 1 {
		return ""
	}
	step, _ := events[0].Data["step"].(string)
	return step
}

// finishSuccessStatement ends the runs $1 (unique ids, ascending) under the epochs $2 with the
// outputs $3, and appends each run's step_started event when that is its only one ($7, or
// $4 without events: aligned with $1, the step or the empty string), each run's SUCCEEDED
// event — both kept on the run (migration 21) — and, with events, the worker's events ($4
// run, $5 type, $6 data). It ends the runs of one kind only:
//
//   - successPlain, runs not on a thread claimed without a limit, whose updates fire no
//     trigger;
//   - successLimited, runs claimed under a concurrency limit, whose updates fire the load
//     trigger: that updates their assistants' assistant_load rows one run at a time, in the
//     order the runs are updated (by id), so the statement first locks those rows in key
//     order (finishLoadsLock), as claims and the general path do, and two batches never wait on each
//     other's load rows in opposite orders (a deadlock with another writer is still
//     retried);
//   - successOnThread, runs on threads claimed without a limit, whose updates fire the
//     thread trigger (the thread's state, its next waiting run): the statement first locks
//     their threads in (tenant, id) order, as creates, claims and the general path do.
//
// Without events (the common case: a short run's only event is its step_started, kept on
// the run) the statement has no event CTEs: every statement starts each node of its plan
// again, the event insert's among them (its table and indexes opened and locked), whether
// it writes a row or not.
func finishSuccessStatement(kind int, events bool) string {
	lock, which := "", "AND r.thread_id IS NULL AND NOT r.limited"
	switch kind {
	case successOnThread:
		lock = `tl AS (` + finishThreadsLock + `), `
		// An InitPlan: the threads are locked before the first run is updated.
		which = "AND r.thread_id IS NOT NULL AND NOT r.limited AND (SELECT count(*) FROM tl) >= 0"
	case successLimited:
		lock = `lk AS (` + finishLoadsLock + `), `
		// An InitPlan: the load rows are locked before the first run is updated.
		which = "AND r.thread_id IS NULL AND r.limited AND (SELECT count(*) FROM lk) >= 0"
	}
	ev, evSeqs, e, steps := "", "", "", "$4"
	if events {
		ev = `ev AS (
			-- The worker's events in their order, each with its seq taken here, before
			-- the runs take theirs: the log's seq follows that order. (A subquery with
			-- ORDER BY is not flattened: nextval sees its rows in order.)
			SELECT x.run_id, x.type, x.data, nextval('run_events_seq_seq') AS seq FROM (
				SELECT * FROM unnest($4::uuid[], $5::text[], $6::jsonb[]) WITH ORDINALITY AS x(run_id, type, data, ord)
				ORDER BY x.ord
			) x
		), `
		evSeqs = "AND (SELECT count(*) FROM ev) >= 0 "
		e = `, e AS (
			-- The events of the runs ended here (a stale claim's are dropped with it).
			INSERT INTO run_events (run_id, tenant_id, seq, type, data) OVERRIDING SYSTEM VALUE
			SELECT ev.run_id, u.tenant_id, ev.seq, ev.type, ev.data FROM ev JOIN u ON u.id = ev.run_id
		)`
		steps = "$7"
	}
	return `
		WITH ` + lock + ev + `st AS (
			-- The seqs of the step_started events kept on the runs, aligned with $1.
			SELECT array_agg(CASE WHEN k.step <> '' THEN nextval('run_events_seq_seq') END ORDER BY k.ord) AS seqs
			FROM unnest(` + steps + `::text[]) WITH ORDINALITY AS k(step, ord)
		), u AS (
			-- The step_started event that was a result's only event and the SUCCEEDED
			-- event stay on the run (migration 21): step_seq, started_step, end_seq, and
			-- end_time for both.
			UPDATE runs r SET state = 3, output = ($3::jsonb[])[width_bucket(r.id, $1::uuid[])],
				error = '', end_time = now(),
				step_seq = ((SELECT seqs FROM st))[width_bucket(r.id, $1::uuid[])],
				started_step = nullif((` + steps + `::text[])[width_bucket(r.id, $1::uuid[])], ''),
				end_seq = nextval('run_events_seq_seq')
			-- r.id = ANY($1): an index probe of runs_pkey per run whatever the statistics
			-- say (the list indexes serve listings only: migration 22). Each run's epoch, output
			-- and kept step are found by its position in $1, which holds unique ids in
			-- ascending order: width_bucket finds it by binary search (array_position,
			-- until the twelfth pass, scanned $1 for each value, n² comparisons per
			-- statement: 24-28 µs per run in batches of 512, now 12-13). Not by joining
			-- unnest($1, $2, $3, $7): with r.id = ANY($1) the planner ran that join as a
			-- nested loop that rescanned the arrays for every run (0.9 ms for 32 runs, 97
			-- ms for 512), and without it the generic plan made while runs was small read
			-- all of runs_pkey at every call (TestFinishProbesRunsByKey checks the plan).
			-- The InitPlans on ev and st make the events take their seqs before the first
			-- run takes its end_seq.
			WHERE r.id = ANY($1) AND r.epoch = ($2::bigint[])[width_bucket(r.id, $1::uuid[])]
				AND r.state = 2 ` + which + `
				` + evSeqs + `AND cardinality((SELECT seqs FROM st)) >= 0
			RETURNING r.id, r.tenant_id
		), l AS (
			DELETE FROM run_leases WHERE run_id = ANY(ARRAY(SELECT id FROM u))
		)` + e + `
		SELECT id FROM u`
}

// finishSuccess holds finishSuccessStatement's statements, by [kind][events].
var finishSuccess = [successKinds][2]string{
	{finishSuccessStatement(successPlain, false), finishSuccessStatement(successPlain, true)},
	{finishSuccessStatement(successLimited, false), finishSuccessStatement(successLimited, true)},
	{finishSuccessStatement(successOnThread, false), finishSuccessStatement(successOnThread, true)},
}

// queueFinish adds the statements that end one locked run to b and records the outcome.
func queueFinish(b *pgx.Batch, p FinishParams, state []byte, r finishRow, res *FinishResult) error {
	outcome := p.Outcome
	if r.cancelRequested && outcome != OutcomeSucceeded {
		outcome = OutcomeCancelled
	}
	switch {
	case outcome == OutcomeReleased:
		res.State = StateQueued
		b.Queue(`
			WITH l AS (DELETE FROM run_leases WHERE run_id = $1), `+writeOutRunning("$1")+`, u AS (
				UPDATE runs SET state = 1, worker_id = NULL, `+clearRunning+`,
					checkpoint = coalesce($2, checkpoint)
				WHERE id = $1 RETURNING *)
			`+enqueue("u", "now()"), p.RunID, state)
	case outcome == OutcomeFailed && p.Retryable && r.attempt < r.maxAttempts:
		res.State, res.Retried = StateQueued, true
		b.Queue(`
			WITH l AS (DELETE FROM run_leases WHERE run_id = $1), `+writeOutRunning("$1")+`, u AS (
				UPDATE runs SET state = 1, worker_id = NULL, attempt = attempt + 1, `+clearRunning+`,
					error = $2, next_attempt_time = now() + $3 * interval '1 millisecond',
					checkpoint = NULL, next_step = NULL
				WHERE id = $1 RETURNING *)
			`+enqueue("u", "next_attempt_time"),
			p.RunID, p.Error, p.RetryDelay.Milliseconds())
	default:
		res.State = terminalState(outcome)
		out := state
		if res.State != StateSucceeded && res.State != StateInterrupted {
			out = nil
		}
		errMsg := p.Error
		if res.State == StateCancelled && errMsg == "" {
			errMsg = "cancelled"
		}
		if res.State == StateInterrupted {
			prompt, err := jsonenc.Marshal(p.Prompt)
			if err != nil {
				return fmt.Errorf("encoding prompt: %w", err)
			}
			b.Queue(`WITH l AS (DELETE FROM run_leases WHERE run_id = $1)
				UPDATE runs SET state = 7, resume = NULL,
				checkpoint = coalesce($2, checkpoint), next_step = nullif($3, ''), prompt = $4 WHERE id = $1`,
				p.RunID, state, p.Step, prompt)
		} else {
			b.Queue(`WITH l AS (DELETE FROM run_leases WHERE run_id = $1)
				UPDATE runs SET state = $2, output = $3, error = $4, end_time = now() WHERE id = $1`,
				p.RunID, res.State, out, errMsg)
		}
	}
	data := map[string]any{"state": stateName(res.State)}
	if res.Retried {
		data["retry"] = true
		data["attempt"] = r.attempt + 1
	}
	if p.Error != "" {
		data["error"] = p.Error
	}
	if res.State == StateInterrupted {
		data["step"] = p.Step
		data["prompt"] = p.Prompt
	}
	ev, err := jsonenc.Marshal(data)
	if err != nil {
		return fmt.Errorf("encoding event: %w", err)
	}
	b.Queue(`INSERT INTO run_events (run_id, tenant_id, type, data) VALUES ($1, $2, 'state', $3)`, p.RunID, r.tenant, ev)
	return nil
}

func terminalState(o Outcome) RunState {
	switch o {
	case OutcomeSucceeded:
		return StateSucceeded
	case OutcomeCancelled:
		return StateCancelled
	case OutcomeTimedOut:
		return StateTimedOut
	case OutcomeInterrupted:
		return StateInterrupted
	default:
		return StateFailed
	}
}

func stateName(s RunState) string {
	switch s {
	case StateQueued:
		return "QUEUED"
	case StateRunning:
		return "RUNNING"
	case StateSucceeded:
		return "SUCCEEDED"
	case StateFailed:
		return "FAILED"
	case StateCancelled:
		return "CANCELLED"
	case StateTimedOut:
		return "TIMED_OUT"
	case StateInterrupted:
		return "INTERRUPTED"
	}
	return "STATE_UNSPECIFIED"
}

// Checkpoint records a run's state after a step, fenced by the claim's epoch.
func (s *Store) Checkpoint(ctx context.Context, runID uuid.UUID, epoch int64, nextStep string, state map[string]any) error {
	b, err := jsonenc.Marshal(state)
	if err != nil {
		return fmt.Errorf("encoding checkpoint: %w", err)
	}
	// The resume answer was for the step that just completed: clear it.
	tag, err := s.pool.Exec(ctx, `UPDATE runs SET checkpoint = $3, next_step = nullif($4, ''), resume = NULL
		WHERE id = $1 AND epoch = $2 AND state = 2`, runID, epoch, b, nextStep)
	if err != nil {
		return fmt.Errorf("checkpointing run %s: %w", runID, err)
	}
	if tag.RowsAffected() == 0 {
		return ErrStaleEpoch
	}
	return nil
}

// AppendRunEvent appends an event to a running run's log, fenced by the claim's epoch:
// the run row is share-locked so no new claim can slip between the check and the insert.
func (s *Store) AppendRunEvent(ctx context.Context, runID uuid.UUID, epoch int64, typ string, data map[string]any) error {
	b, err := jsonenc.Marshal(data)
	if err != nil {
		return fmt.Errorf("encoding event: %w", err)
	}
	tag, err := s.pool.Exec(ctx, `
		INSERT INTO run_events (run_id, tenant_id, type, data)
		SELECT id, tenant_id, $3, $4 FROM runs WHERE id = $1 AND epoch = $2 AND state = 2 FOR SHARE`,
		runID, epoch, typ, b)
	if err != nil {
		return fmt.Errorf("appending event of run %s: %w", runID, err)
	}
	if tag.RowsAffected() == 0 {
		return ErrStaleEpoch
	}
	return nil
}

// RunEvent is an entry of a run's event log.
type RunEvent struct {
	Seq        int64
	Type       string
	Data       map[string]any
	CreateTime time.Time
}

// queuedEvent is the data of a run's first event, kept on the run (migration 11).
const queuedEvent = `'{"state": "QUEUED"}'::jsonb`

// succeededEvent is the data of the SUCCEEDED event of a run whose end_seq is set
// (migration 21).
const succeededEvent = `'{"state": "SUCCEEDED"}'::jsonb`

// stepStartedEvent is the data of the step_started event kept on a run whose step_seq is
// set (migration 21).
const stepStartedEvent = `jsonb_build_object('step', r.started_step)`

// runningEvent is the data of the RUNNING event of the current claim of the run r, kept on
// the run (migration 12). Since migration 14 claims no longer store it (running_event is
// NULL): it is made from the claim's worker, attempt and epoch, which stay on the run until
// a statement queues the run again, and that statement writes the event out first
// (writeOutRunning). Runs claimed before migration 14 still carry the stored copy, which
// is the same object.
const runningEvent = `coalesce(r.running_event, jsonb_build_object('state', 'RUNNING',
	'worker', r.worker_id, 'attempt', r.attempt, 'epoch', r.epoch))`

// writeOutRunning is a CTE (named "ran") that writes the RUNNING event kept on the runs
// whose id is `= ids` (migration 12; ids is "$1" or an `ANY(…)` expression) into
// run_events, with its seq and time. Every statement that queues a claimed run again has
// it, and sets clearRunning in its update of the run: the next claim replaces the event
// kept on the run. The CTE reads the runs as they were before the statement, whatever the
// order in which PostgreSQL runs its parts.
func writeOutRunning(ids string) string {
	return `ran AS (
			INSERT INTO run_events (run_id, tenant_id, seq, type, data, create_time) OVERRIDING SYSTEM VALUE
			SELECT r.id, r.tenant_id, r.running_seq, 'state', ` + runningEvent + `, r.claim_time FROM runs r
			WHERE r.id = ` + ids + ` AND r.running_seq IS NOT NULL
		)`
}

// clearRunning is the SET clause that goes with writeOutRunning.
const clearRunning = `running_seq = NULL, running_event = NULL`

// runEventsQuery selects up to limit events of the run id of tenant with seq > after (SQL
// expressions), in order: the rows of run_events and the run's QUEUED event, current
// RUNNING event, and its last step_started and SUCCEEDED events when it holds them
// (migration 21).
func runEventsQuery(id, tenant, after, limit string) string {
	return `SELECT seq, type, data, create_time FROM (
			SELECT v.seq, v.type, v.data, v.create_time FROM runs r,
				LATERAL (VALUES (r.queued_seq, 'state', ` + queuedEvent + `, r.create_time),
					(r.running_seq, 'state', ` + runningEvent + `, r.claim_time),
					(r.step_seq, 'step_started', ` + stepStartedEvent + `, r.end_time),
					(r.end_seq, 'state', ` + succeededEvent + `, r.end_time)) AS v(seq, type, data, create_time)
			WHERE r.id = ` + id + ` AND r.tenant_id = ` + tenant + ` AND v.seq > ` + after + `
			UNION ALL
			(SELECT seq, type, data, create_time FROM run_events
			WHERE run_id = ` + id + ` AND tenant_id = ` + tenant + ` AND seq > ` + after + ` ORDER BY seq LIMIT ` + limit + `)
		) e ORDER BY seq LIMIT ` + limit
}

// ListRunEvents returns up to limit events of a run with seq > afterSeq, in order (see
// runEventsQuery).
func (s *Store) ListRunEvents(ctx context.Context, tenant string, runID uuid.UUID, afterSeq int64, limit int) ([]RunEvent, error) {
	rows, err := s.pool.Query(ctx, runEventsQuery("$1", "$2", "$3", "$4"), runID, tenant, afterSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("listing events of run %s: %w", runID, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (RunEvent, error) {
		var e RunEvent
		var data []byte
		if err := row.Scan(&e.Seq, &e.Type, &data, &e.CreateTime); err != nil {
			return e, err
		}
		return e, json.Unmarshal(data, &e.Data)
	})
	if err != nil {
		return nil, fmt.Errorf("listing events of run %s: %w", runID, err)
	}
	return out, nil
}

// RunEventsAfter names the events of a run after a seq, for ListEventsOfRuns.
type RunEventsAfter struct {
	Tenant   string
	ID       uuid.UUID
	AfterSeq int64
}

// eventsOfRunsStatement is ListEventsOfRuns' statement. Its arrays reach the planner as
// InitPlans' values, as getRunsStatement's: sized by a custom plan, an unnest of a few
// runs looked cheaper than the generic plan's guess, and the statement was planned afresh
// at every poll (~0.25 ms on an idle server for one stream, against ~0.09 of execution).
var eventsOfRunsStatement = `SELECT k.ord, e.seq, e.type, e.data, e.create_time
		FROM unnest((SELECT $1::uuid[]), (SELECT $2::text[]), (SELECT $3::bigint[])) WITH ORDINALITY AS k(run_id, tenant_id, after_seq, ord),
			LATERAL (` + runEventsQuery("k.run_id", "k.tenant_id", "k.after_seq", "$4") + `) e
		ORDER BY k.ord, e.seq`

// ListEventsOfRuns is ListRunEvents for many runs in one statement: out[i] holds up to
// limit events of runs[i] (none for a run that is not there).
func (s *Store) ListEventsOfRuns(ctx context.Context, runs []RunEventsAfter, limit int) ([][]RunEvent, error) {
	ids, tenants, afters := make([]uuid.UUID, len(runs)), make([]string, len(runs)), make([]int64, len(runs))
	for i, r := range runs {
		ids[i], tenants[i], afters[i] = r.ID, r.Tenant, r.AfterSeq
	}
	rows, err := s.pool.Query(ctx, eventsOfRunsStatement, ids, tenants, afters, limit)
	if err != nil {
		return nil, fmt.Errorf("listing events of %d runs: %w", len(runs), err)
	}
	out := make([][]RunEvent, len(runs))
	var (
		ord  int64
		e    RunEvent
		data []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&ord, &e.Seq, &e.Type, &data, &e.CreateTime}, func() error {
		ev := RunEvent{Seq: e.Seq, Type: e.Type, CreateTime: e.CreateTime}
		if err := json.Unmarshal(data, &ev.Data); err != nil {
			return err
		}
		out[ord-1] = append(out[ord-1], ev)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing events of %d runs: %w", len(runs), err)
	}
	return out, nil
}

// Lease names a run and the epoch of a claim of it.
type Lease struct {
	RunID uuid.UUID
	Epoch int64
}

// ValidateLeases checks the leases a reconnecting worker reports. It returns the slot
// type of each lease that is still the worker's, and the leases that are not (the worker
// must stop those runs).
func (s *Store) ValidateLeases(ctx context.Context, workerID string, leases []Lease) (map[uuid.UUID]string, []Lease, error) {
	valid := make(map[uuid.UUID]string)
	if len(leases) == 0 {
		return valid, nil, nil
	}
	ids := make([]uuid.UUID, len(leases))
	for i, l := range leases {
		ids[i] = l.RunID
	}
	rows, err := s.pool.Query(ctx, `SELECT run_id, epoch, slot_type FROM run_leases WHERE run_id = ANY($1) AND worker_id = $2`, ids, workerID)
	if err != nil {
		return nil, nil, fmt.Errorf("validating leases of worker %s: %w", workerID, err)
	}
	type cur struct {
		epoch    int64
		slotType string
	}
	current := make(map[uuid.UUID]cur)
	for rows.Next() {
		var id uuid.UUID
		var c cur
		if err := rows.Scan(&id, &c.epoch, &c.slotType); err != nil {
			rows.Close()
			return nil, nil, err
		}
		current[id] = c
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	var lost []Lease
	for _, l := range leases {
		if c, ok := current[l.RunID]; ok && c.epoch == l.Epoch {
			valid[l.RunID] = c.slotType
		} else {
			lost = append(lost, l)
		}
	}
	return valid, lost, nil
}

// RecoverParams tunes RecoverRuns.
type RecoverParams struct {
	// Batch is the most runs handled per call.
	Batch int
	// TimeoutGrace is how long past its timeout a running run may go before the
	// scheduler times it out itself (its worker should have done it).
	TimeoutGrace time.Duration
}

// RecoverResult counts what RecoverRuns did.
type RecoverResult struct {
	Requeued  int
	TimedOut  int
	Cancelled int
	// Stopped lists the runs timed out while their lease was still held; their workers
	// must be told to stop them.
	Stopped []Lease
}

// recoverStatement is RecoverRuns' statement: $1 is the batch, $2 the timeout grace in
// milliseconds.
var recoverStatement = `
		WITH due AS (
			-- Both rows locked, neither waited for: a completion or renewal in progress
			-- is left alone. The leases due are found on run_leases alone (its deadline
			-- is the run's claim_time + timeout, migration 25): runs is read only for
			-- them, not for every run in flight.
			SELECT l.run_id AS id, l.expire_time < now() AS expired
			FROM run_leases l JOIN runs r ON r.id = l.run_id AND r.epoch = l.epoch AND r.state = 2
			WHERE l.expire_time < now() OR l.deadline_time + $2 * interval '1 millisecond' < now()
			ORDER BY l.expire_time
			LIMIT $1
			FOR UPDATE OF l, r SKIP LOCKED
		), dl AS (
			DELETE FROM run_leases WHERE run_id = ANY(ARRAY(SELECT id FROM due))
		), ` + writeOutRunning("ANY(ARRAY(SELECT id FROM due))") + `, u AS (
			UPDATE runs r SET
				` + clearRunning + `,
				state = CASE
					WHEN r.cancel_requested THEN 5
					WHEN r.claim_time + (r.timeout_ms * interval '1 millisecond') < now() THEN 6
					ELSE 1 END,
				epoch = r.epoch + 1,
				worker_id = CASE WHEN due.expired THEN NULL ELSE r.worker_id END,
				end_time = CASE WHEN r.cancel_requested
					OR r.claim_time + (r.timeout_ms * interval '1 millisecond') < now() THEN now() END,
				error = CASE
					WHEN r.cancel_requested THEN 'cancelled'
					WHEN r.claim_time + (r.timeout_ms * interval '1 millisecond') < now()
						THEN 'execution timeout of ' || (r.timeout_ms / 1000.0)::text || 's exceeded'
					ELSE r.error END
			FROM due WHERE r.id = due.id
			RETURNING r.id, r.tenant_id, r.seq, r.assistant_id, r.slot_type, r.priority, r.state, r.epoch, due.expired
		), q AS (
			` + enqueue("u", "now()") + ` WHERE state = 1
		), e AS (
			INSERT INTO run_events (run_id, tenant_id, type, data)
			SELECT id, tenant_id, 'state', jsonb_build_object('state',
				CASE state WHEN 1 THEN 'QUEUED' WHEN 5 THEN 'CANCELLED' ELSE 'TIMED_OUT' END,
				'reason', CASE WHEN expired THEN 'lease_expired' ELSE 'timeout' END) FROM u
		)
		SELECT id, state, epoch - 1, expired FROM u`

// RecoverRuns requeues the running runs whose lease expired (their worker is gone: no
// attempt is used), ends those past their timeout as TIMED_OUT and those with a pending
// cancel as CANCELLED. Each transition bumps the epoch so the old worker's writes fail.
func (s *Store) RecoverRuns(ctx context.Context, p RecoverParams) (RecoverResult, error) {
	var res RecoverResult
	rows, err := s.pool.Query(ctx, recoverStatement, p.Batch, p.TimeoutGrace.Milliseconds())
	if err != nil {
		return res, fmt.Errorf("recovering runs: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id uuid.UUID
		var state RunState
		var epoch int64
		var expired bool
		if err := rows.Scan(&id, &state, &epoch, &expired); err != nil {
			return res, err
		}
		switch state {
		case StateQueued:
			res.Requeued++
		case StateTimedOut:
			res.TimedOut++
		case StateCancelled:
			res.Cancelled++
		}
		if !expired {
			res.Stopped = append(res.Stopped, Lease{RunID: id, Epoch: epoch})
		}
	}
	if err := rows.Err(); err != nil {
		return res, fmt.Errorf("recovering runs: %w", err)
	}
	if res.Requeued > 0 {
		if _, err := s.pool.Exec(ctx, `SELECT pg_notify($1, '')`, QueueChannel); err != nil {
			return res, fmt.Errorf("notifying queue: %w", err)
		}
	}
	return res, nil
}

// cancelRequests is CancelRequests' statement: it reads the requests only, through the
// partial index run_leases_cancel_requested (migration 24), whatever the runs in flight.
const cancelRequests = `SELECT worker_id, run_id, epoch FROM run_leases
	WHERE cancel_requested AND worker_id = ANY($1)`

// CancelRequests returns the leases of running runs of the given workers that a client
// asked to cancel.
func (s *Store) CancelRequests(ctx context.Context, workerIDs []string) (map[string][]Lease, error) {
	out := make(map[string][]Lease)
	if len(workerIDs) == 0 {
		return out, nil
	}
	// On the hot pool: a plan made once per connection, an index probe by key.
	rows, err := s.hot.Query(ctx, cancelRequests, workerIDs)
	if err != nil {
		return nil, fmt.Errorf("reading cancel requests: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var w string
		var l Lease
		if err := rows.Scan(&w, &l.RunID, &l.Epoch); err != nil {
			return nil, err
		}
		out[w] = append(out[w], l)
	}
	return out, rows.Err()
}

// EventParams is one event a worker reports for a run it holds.
type EventParams struct {
	RunID uuid.UUID
	Epoch int64
	Type  string
	Data  map[string]any
}

// AppendRunEvents appends events of running runs in one statement, in the given order,
// each fenced like AppendRunEvent. It returns the leases whose events were refused.
func (s *Store) AppendRunEvents(ctx context.Context, evs []EventParams) ([]Lease, error) {
	if len(evs) == 0 {
		return nil, nil
	}
	ids := make([]uuid.UUID, len(evs))
	epochs := make([]int64, len(evs))
	types := make([]string, len(evs))
	datas := make([][]byte, len(evs))
	for i, e := range evs {
		b, err := jsonenc.Marshal(e.Data)
		if err != nil {
			return nil, fmt.Errorf("encoding event: %w", err)
		}
		ids[i], epochs[i], types[i], datas[i] = e.RunID, e.Epoch, e.Type, b
	}
	rows, err := s.hot.Query(ctx, `
		INSERT INTO run_events (run_id, tenant_id, type, data)
		SELECT r.id, r.tenant_id, e.type, e.data
		FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::jsonb[]) WITH ORDINALITY AS e(run_id, epoch, type, data, ord)
		JOIN runs r ON r.id = e.run_id AND r.epoch = e.epoch AND r.state = 2
		WHERE r.id = ANY($1)
		ORDER BY e.ord
		FOR SHARE OF r
		RETURNING run_id`, ids, epochs, types, datas)
	if err != nil {
		return nil, fmt.Errorf("appending %d events: %w", len(evs), err)
	}
	written, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("appending %d events: %w", len(evs), err)
	}
	if len(written) == len(evs) {
		return nil, nil
	}
	ok := make(map[uuid.UUID]bool, len(written))
	for _, id := range written {
		ok[id] = true
	}
	var refused []Lease
	seen := make(map[Lease]bool)
	for _, e := range evs {
		l := Lease{RunID: e.RunID, Epoch: e.Epoch}
		if !ok[e.RunID] && !seen[l] {
			seen[l] = true
			refused = append(refused, l)
		}
	}
	return refused, nil
}
