package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/agentserver/agentserver/pkg/jsonenc"
)

// RunState is the state of a run; the numbers are those of agentserver.v1.Run.State.
type RunState int16

// Run states.
const (
	StateQueued      RunState = 1
	StateRunning     RunState = 2
	StateSucceeded   RunState = 3
	StateFailed      RunState = 4
	StateCancelled   RunState = 5
	StateTimedOut    RunState = 6
	StateInterrupted RunState = 7
)

// Terminal reports whether no further transition can leave s.
func (s RunState) Terminal() bool {
	return s == StateSucceeded || s == StateFailed || s == StateCancelled || s == StateTimedOut
}

// Run is a stored run.
type Run struct {
	TenantID         string
	ID               uuid.UUID
	AssistantID      string
	AssistantVersion int64
	ThreadID         string
	State            RunState
	Priority         int32
	SlotType         string
	Input            map[string]any
	Output           map[string]any
	Error            string
	Attempt          int32
	MaxAttempts      int32
	Timeout          time.Duration
	Epoch            int64
	WorkerID         string
	CancelRequested  bool
	RequestID        string
	CreateTime       time.Time
	StartTime        *time.Time
	EndTime          *time.Time
	NextAttemptTime  *time.Time
	// Prompt is what an interrupted step asks (decoded JSON), nil otherwise.
	Prompt any
	// Step is the step the run resumes at (interrupted step or next after a checkpoint).
	Step string
}

// runColumns lists the columns scanRun reads.
const runColumns = `tenant_id, id, assistant_id, assistant_version,
	coalesce(thread_id, ''), state, priority, slot_type, input, output,
	error, attempt, max_attempts, timeout_ms, epoch, coalesce(worker_id, ''),
	cancel_requested, coalesce(request_id, ''), create_time, start_time,
	end_time, next_attempt_time, prompt, coalesce(next_step, '')`

// scanRun scans a row of runColumns.
func scanRun(row pgx.Row) (*Run, error) {
	var r Run
	var timeoutMS int64
	var input, output, prompt []byte
	if err := row.Scan(&r.TenantID, &r.ID, &r.AssistantID, &r.AssistantVersion, &r.ThreadID, &r.State,
		&r.Priority, &r.SlotType, &input, &output, &r.Error, &r.Attempt, &r.MaxAttempts, &timeoutMS,
		&r.Epoch, &r.WorkerID, &r.CancelRequested, &r.RequestID, &r.CreateTime, &r.StartTime,
		&r.EndTime, &r.NextAttemptTime, &prompt, &r.Step); err != nil {
		return nil, err
	}
	if prompt != nil {
		if err := json.Unmarshal(prompt, &r.Prompt); err != nil {
			return nil, fmt.Errorf("decoding run prompt: %w", err)
		}
	}
	r.Timeout = time.Duration(timeoutMS) * time.Millisecond
	if err := json.Unmarshal(input, &r.Input); err != nil {
		return nil, fmt.Errorf("decoding run input: %w", err)
	}
	if output != nil {
		if err := json.Unmarshal(output, &r.Output); err != nil {
			return nil, fmt.Errorf("decoding run output: %w", err)
		}
	}
	return &r, nil
}

// NewRun is a run to create.
type NewRun struct {
	AssistantID string
	ThreadID    string
	Input       map[string]any
	// Priority overrides the assistant's default when set.
	Priority *int32
	// Timeout overrides the assistant's default when > 0.
	Timeout   time.Duration
	RequestID string
	// Multitask says what to do when ThreadID already has an active run.
	Multitask Multitask
}

// Multitask is the policy for a run created on a thread that already has an active run.
type Multitask string

// Multitask policies.
const (
	// MultitaskReject refuses the new run with ErrThreadBusy (the default).
	MultitaskReject Multitask = "reject"
	// MultitaskEnqueue queues the new run behind the active one.
	MultitaskEnqueue Multitask = "enqueue"
	// MultitaskInterrupt cancels the active run; the new one runs after it stops.
	MultitaskInterrupt Multitask = "interrupt"
)

// RunDefaults are the cluster defaults applied where neither run nor assistant says.
type RunDefaults struct {
	// MaxAttempts when the assistant sets none.
	MaxAttempts int32
	// Timeout when neither run nor assistant sets one.
	Timeout time.Duration
	// MaxTimeout caps every run's timeout.
	MaxTimeout time.Duration
}

// QueueChannel is the LISTEN/NOTIFY channel that announces newly runnable runs; the
// payload is the slot type.
const QueueChannel = "agentserver_queue"

// CancelChannel is the LISTEN/NOTIFY channel that announces cancel requests of running
// runs; the payload is the run id.
const CancelChannel = "agentserver_cancel"

// CreateRuns stores runs and enqueues them, all or nothing. A run whose RequestID was
// used before is not created again: the earlier run is returned in its place. Unknown
// assistants fail the whole call with *AssistantNotFoundError, a thread that does not
// exist with *ThreadNotFoundError, a busy thread that rejects a run with
// *ThreadBusyError. The call is one autocommit statement, runs on threads joining their
// threads in it (createStatement); a run that interrupts a busy thread makes it a
// transaction (joinThreads). A new run's Input is the map given (nil as {}),
// not a decoding of what was stored: values JSON cannot tell apart (an int and a float64)
// stay as given.
func (s *Store) CreateRuns(ctx context.Context, tenant string, runs []NewRun, d RunDefaults) ([]*Run, error) {
	in, err := newCreateInput(runs)
	if err != nil {
		return nil, err
	}
	return s.createRuns(ctx, tenant, in, runs, d)
}

// createRuns is CreateRuns of runs whose ids and encoded inputs are in.
func (s *Store) createRuns(ctx context.Context, tenant string, in createInput, runs []NewRun, d RunDefaults) ([]*Run, error) {
	withThreads := slices.ContainsFunc(in.threads, func(id string) bool { return id != "" })
	var out []*Run
	var err error
	if !withThreads {
		out, err = insertRuns(ctx, s.pool, tenant, in, d, false)
	} else {
		// A deadlock with another kind of writer (a finish or cancel that locks a run,
		// then its thread) rolls the statement back whole, and it runs again.
		err = s.retryDeadlock(func() error {
			var err error
			out, err = insertRuns(ctx, s.pool, tenant, in, d, true)
			return err
		})
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "AST10" {
			// A run interrupts a busy thread: the runs join their threads in a
			// transaction, which cancels the active run (joinThreads).
			err = s.retryDeadlock(func() error {
				return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
					var err error
					if out, err = insertRuns(ctx, tx, tenant, in, d, false); err != nil {
						return err
					}
					return joinThreads(ctx, tx, tenant, out, in, runs)
				})
			})
		}
	}
	var pgErr *pgconn.PgError
	var tnf *ThreadNotFoundError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "AS404":
		return nil, &AssistantNotFoundError{ID: pgErr.Detail}
	case errors.As(err, &pgErr) && pgErr.Code == "AST04":
		return nil, &ThreadNotFoundError{ID: pgErr.Detail}
	case errors.As(err, &pgErr) && pgErr.Code == "AST09":
		active, perr := uuid.Parse(pgErr.Detail)
		ord, oerr := strconv.Atoi(pgErr.Hint)
		if perr != nil || oerr != nil {
			return nil, fmt.Errorf("creating runs: %w", err)
		}
		return nil, &ThreadBusyError{Active: active, Run: ord - 1}
	case errors.As(err, &tnf) || errors.Is(err, ErrThreadBusy):
		return nil, err
	case err != nil:
		return nil, fmt.Errorf("creating runs: %w", err)
	}
	return out, nil
}

// CreateRunsEach creates runs as CreateRuns does, except that a run refused for a reason
// of its own (an unknown assistant or thread, a busy thread that rejects it) fails alone:
// errs[i] is run i's error and out[i] its run otherwise. The refused runs are left out
// and the others created again together, as many times as refusals come (each refusal
// names its runs: the assistant's, the thread's, or the one rejected), so every run gets
// the answer it would get created alone after the runs before it. err is an error of the
// whole call (the database's), which no run was created by.
func (s *Store) CreateRunsEach(ctx context.Context, tenant string, runs []NewRun, d RunDefaults) (out []*Run, errs []error, err error) {
	// Each run keeps its id from one try to the next: a refusal may name a run of the
	// batch (the one in its way), which must be the run created.
	all, err := newCreateInput(runs)
	if err != nil {
		return nil, nil, err
	}
	out, errs = make([]*Run, len(runs)), make([]error, len(runs))
	left := make([]int, len(runs)) // the indexes of the runs still to create
	for i := range left {
		left[i] = i
	}
	for len(left) > 0 {
		in, batch := all, runs
		if len(left) < len(runs) { // a try after a refusal
			in, batch = all.pick(left), make([]NewRun, len(left))
			for k, i := range left {
				batch[k] = runs[i]
			}
		}
		created, err := s.createRuns(ctx, tenant, in, batch, d)
		if err == nil {
			for k, i := range left {
				out[i] = created[k]
			}
			return out, errs, nil
		}
		refused := refusedRuns(err, batch)
		if refused == nil {
			return nil, nil, err
		}
		rest := left[:0:0]
		for k, i := range left {
			if refused[k] {
				errs[i] = err
			} else {
				rest = append(rest, i)
			}
		}
		// A run refused because of a run of the batch that is now refused itself (a
		// concurrent create took their thread between two tries) tries again: the run
		// named in its error would not exist.
		for i, e := range errs {
			var busy *ThreadBusyError
			if errors.As(e, &busy) {
				if j := slices.Index(all.ids, busy.Active); j >= 0 && errs[j] != nil {
					errs[i] = nil
					rest = append(rest, i)
				}
			}
		}
		slices.Sort(rest)
		left = rest
	}
	return out, errs, nil
}

// refusedRuns reports which runs of batch err refuses (an unknown assistant's, a missing
// thread's, a rejected run), or nil when err is not one of those.
func refusedRuns(err error, batch []NewRun) map[int]bool {
	var anf *AssistantNotFoundError
	var tnf *ThreadNotFoundError
	var busy *ThreadBusyError
	refused := map[int]bool{}
	for k, r := range batch {
		switch {
		case errors.As(err, &anf) && r.AssistantID == anf.ID,
			errors.As(err, &tnf) && r.ThreadID == tnf.ID,
			errors.As(err, &busy) && busy.Run == k:
			refused[k] = true
		}
	}
	if len(refused) == 0 {
		return nil
	}
	return refused
}

// newCreateInput gives each run its id and encodes its input.
func newCreateInput(runs []NewRun) (in createInput, err error) {
	n := len(runs)
	in = createInput{
		ids: make([]uuid.UUID, n), assistants: make([]string, n), inputs: make([][]byte, n), values: make([]map[string]any, n),
		priorities: make([]*int32, n), timeouts: make([]int64, n), requestIDs: make([]string, n),
		threads: make([]string, n), multitask: make([]string, n),
	}
	for i, r := range runs {
		id, err := uuid.NewV7()
		if err != nil {
			return in, err
		}
		input := r.Input
		if input == nil {
			input = map[string]any{}
		}
		if in.inputs[i], err = jsonenc.Marshal(input); err != nil {
			return in, fmt.Errorf("encoding run input: %w", err)
		}
		in.ids[i], in.assistants[i], in.priorities[i], in.values[i] = id, r.AssistantID, r.Priority, input
		in.timeouts[i], in.requestIDs[i], in.threads[i], in.multitask[i] = r.Timeout.Milliseconds(), r.RequestID, r.ThreadID, string(r.Multitask)
	}
	return in, nil
}

// pick is the runs at indexes of in, in that order.
func (in createInput) pick(indexes []int) createInput {
	out := createInput{}
	for _, i := range indexes {
		out.ids, out.assistants, out.inputs = append(out.ids, in.ids[i]), append(out.assistants, in.assistants[i]), append(out.inputs, in.inputs[i])
		out.values, out.priorities, out.timeouts = append(out.values, in.values[i]), append(out.priorities, in.priorities[i]), append(out.timeouts, in.timeouts[i])
		out.requestIDs, out.threads, out.multitask = append(out.requestIDs, in.requestIDs[i]), append(out.threads, in.threads[i]), append(out.multitask, in.multitask[i])
	}
	return out
}

// createInput holds the runs to create as the columns the insert statement unnests.
type createInput struct {
	ids        []uuid.UUID
	assistants []string
	inputs     [][]byte
	// values are the inputs as given (nil made {}): a created run's Input, not decoded
	// back from what was stored.
	values     []map[string]any
	priorities []*int32
	timeouts   []int64
	requestIDs []string
	threads    []string
	multitask  []string
}

// dbtx is what insertRuns needs of a pool or a transaction.
type dbtx interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// createStatement is insertRuns's statement. Only a batch with request ids (idempotent)
// inserts with ON CONFLICT: PostgreSQL inserts every row of such an INSERT speculatively
// (a lock taken and released and a confirming WAL record per row) whether the row can
// conflict or not, and a run without a request id never can (runs_request_id holds the
// runs that have one).
//
// The statement of a batch with runs on threads (onThreads) also joins them to their
// threads: it locks the batch's threads in (tenant, id) order as every writer of threads
// does (lockThreads), and applies the multitask policies in the batch's order, as
// joinThread would run by run: the first run on an idle thread becomes its active run and
// is queued, the next ones wait in thread_queue (enqueue); a thread that does not exist, a
// busy thread that rejects a run, or a run that would interrupt a busy thread make the
// statement raise (agentserver_thread_refuses, migration 26; the first such run of the
// batch names the reason), which undoes all it wrote. One round trip, where a transaction
// of insert, lock and writes took five.
func createStatement(idempotent, onThreads bool) string {
	onConflict := ""
	if idempotent {
		onConflict = `ON CONFLICT (tenant_id, request_id) WHERE request_id IS NOT NULL DO NOTHING`
	}
	multitask, multitaskColumn := "", ""
	if onThreads {
		multitask, multitaskColumn = ", $12::text[]", ", multitask"
	}
	stmt := `
		WITH input AS (
			SELECT * FROM unnest($2::uuid[], $3::text[], $4::jsonb[], $5::int[], $6::bigint[], $7::text[], $8::text[]` + multitask + `)
				WITH ORDINALITY AS t(id, assistant_id, input, priority, timeout_ms, request_id, thread_id` + multitaskColumn + `, ord)
		), ins AS (
			INSERT INTO runs (id, tenant_id, assistant_id, assistant_version, thread_id, seq, state, priority,
				slot_type, input, max_attempts, timeout_ms, request_id, gpu_memory_bytes, queued_seq)
			-- An unknown assistant raises (its version is the function's, which raises),
			-- failing the whole statement: nothing it inserted stays.
			SELECT i.id, $1, i.assistant_id, coalesce(a.version, agentserver_unknown_assistant(i.assistant_id)),
				nullif(i.thread_id, ''), nextval('run_seq'), 1,
				coalesce(i.priority, a.priority), a.slot_type, i.input,
				CASE WHEN a.max_attempts > 0 THEN a.max_attempts ELSE $9 END,
				least(CASE WHEN i.timeout_ms > 0 THEN i.timeout_ms WHEN a.timeout_ms > 0 THEN a.timeout_ms ELSE $10 END, $11),
				-- The run's QUEUED event: its seq in the log, kept on the run (migration 11).
				nullif(i.request_id, ''), a.gpu_memory_bytes, nextval('run_events_seq_seq')
			FROM input i LEFT JOIN assistants a ON a.tenant_id = $1 AND a.id = i.assistant_id
			ORDER BY i.ord
			` + onConflict + `
			-- Only the columns read below (enqueue's among them), not the whole row.
			RETURNING id, seq, tenant_id, assistant_id, assistant_version, thread_id, priority,
				slot_type, max_attempts, timeout_ms, create_time
		), `
	if !onThreads {
		stmt += `q AS (
			` + enqueue("ins", "now()") + ` WHERE thread_id IS NULL
		)`
	} else {
		stmt += `th AS MATERIALIZED (
			` + lockThreads(`SELECT DISTINCT $1::text AS tenant_id, x.thread_id FROM input x WHERE x.thread_id <> '' ORDER BY 2`,
			"UPDATE", "th.id, th.active_run_id") + `
		), d AS MATERIALIZED (
			-- What each run this statement inserted on a thread does, in the batch's order:
			-- blocker is the run in its way (the thread's active run, or the batch's first
			-- run on that thread).
			SELECT s.*, CASE
					WHEN NOT s.found THEN 'missing'
					WHEN s.active_run_id IS NULL AND s.n = 1 THEN 'activate'
					WHEN s.multitask = 'enqueue' THEN 'wait'
					WHEN s.multitask = 'interrupt' THEN 'interrupt'
					ELSE 'busy'
				END AS action
			FROM (
				SELECT ins.id, ins.thread_id, i.ord, i.multitask, th.id IS NOT NULL AS found, th.active_run_id,
					coalesce(th.active_run_id, first_value(ins.id) OVER w) AS blocker, row_number() OVER w AS n
				FROM ins JOIN input i ON i.id = ins.id LEFT JOIN th ON th.id = ins.thread_id
				WHERE ins.thread_id IS NOT NULL
				WINDOW w AS (PARTITION BY ins.thread_id ORDER BY i.ord)
			) s
		), act AS (
			UPDATE threads t SET active_run_id = d.id, update_time = now()
			FROM d WHERE d.action = 'activate' AND t.tenant_id = $1 AND t.id = d.thread_id
		), queued AS (
			SELECT ins.* FROM ins LEFT JOIN d ON d.id = ins.id WHERE ins.thread_id IS NULL OR d.action = 'activate'
		), q AS (
			` + enqueue("queued", "now()") + `
		), w AS (
			INSERT INTO thread_queue (run_id, tenant_id, thread_id, seq)
			SELECT ins.id, ins.tenant_id, ins.thread_id, ins.seq FROM ins JOIN d ON d.id = ins.id WHERE d.action = 'wait'
		)`
	}
	stmt += `
		-- One notification per slot type however many runs name it: PostgreSQL delivers
		-- identical notifications of a transaction once. Only what the database chose comes
		-- back: the rest of a new run is what this call sent or a column default (see
		-- createdRun).
		SELECT id, assistant_version, priority, slot_type, max_attempts, timeout_ms, create_time,
			pg_notify('` + QueueChannel + `', slot_type) IS NULL
		FROM ins`
	if onThreads {
		// A one-time filter, evaluated before any row is returned: the first refused run,
		// if any, raises.
		stmt += `
		WHERE (SELECT agentserver_thread_refuses(r.action, r.detail, r.ord) FROM (
			SELECT d.action, CASE WHEN d.action = 'missing' THEN d.thread_id ELSE d.blocker::text END AS detail, d.ord
			FROM d WHERE d.action IN ('missing', 'busy', 'interrupt') ORDER BY d.ord LIMIT 1
		) r) IS NULL`
	}
	return stmt
}

// createStatements are createStatement's, by idempotent and onThreads.
var createStatements = [2][2]string{
	{createStatement(false, false), createStatement(false, true)},
	{createStatement(true, false), createStatement(true, true)},
}

// insertRuns inserts the runs in one statement and returns them in input order: an
// unknown assistant raises AS404 and the statement writes nothing; runs without a thread
// are queued and the queue NOTIFY is sent in the same statement. Runs on a thread join it
// in the same statement when join is set (createStatement: a refusal raises AST04, AST09
// or AST10); otherwise they are left for joinThreads. A run whose request id was used
// before comes back as that earlier run.
func insertRuns(ctx context.Context, db dbtx, tenant string, in createInput, d RunDefaults, join bool) ([]*Run, error) {
	idempotent := 0
	if slices.ContainsFunc(in.requestIDs, func(id string) bool { return id != "" }) {
		idempotent = 1
	}
	args := []any{tenant, in.ids, in.assistants, in.inputs, in.priorities, in.timeouts, in.requestIDs, in.threads,
		d.MaxAttempts, d.Timeout.Milliseconds(), d.MaxTimeout.Milliseconds()}
	stmt := createStatements[idempotent][0]
	if join {
		stmt, args = createStatements[idempotent][1], append(args, in.multitask)
	}
	rows, err := db.Query(ctx, stmt, args...)
	if err != nil {
		return nil, err
	}
	index := make(map[uuid.UUID]int, len(in.ids))
	for i, id := range in.ids {
		index[id] = i
	}
	out := make([]*Run, len(in.ids))
	var (
		c        createdRun
		notified bool // pg_notify's result is void: only its call counts
	)
	_, err = pgx.ForEachRow(rows, []any{&c.id, &c.assistantVersion, &c.priority, &c.slotType, &c.maxAttempts, &c.timeoutMS, &c.createTime, &notified}, func() error {
		i, ok := index[c.id]
		if !ok {
			return fmt.Errorf("created run %s was not asked for", c.id)
		}
		out[i] = c.run(tenant, in, i)
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i := range in.ids {
		if out[i] != nil {
			continue
		}
		// Not inserted: its request id was used before. Return that run.
		r, err := scanRun(db.QueryRow(ctx, `SELECT `+runColumns+` FROM runs WHERE tenant_id = $1 AND request_id = $2`, tenant, in.requestIDs[i]))
		if err != nil {
			return nil, fmt.Errorf("reading run of request %q: %w", in.requestIDs[i], err)
		}
		out[i] = r
	}
	return out, nil
}

// createdRun is what insertRuns reads back of a run it created.
type createdRun struct {
	id                    uuid.UUID
	assistantVersion      int64
	priority, maxAttempts int32
	slotType              string
	timeoutMS             int64
	createTime            time.Time
}

// run is the created run i of in as scanRun would read it: the columns insertRuns sets
// from in, the defaults of the rest (runs' DDL: attempt 1, epoch 0, error ”, nulls), and
// what the database chose. TestCreatedRunsAreReturnedAsStored holds the two together.
func (c *createdRun) run(tenant string, in createInput, i int) *Run {
	return &Run{
		TenantID: tenant, ID: c.id, AssistantID: in.assistants[i], AssistantVersion: c.assistantVersion,
		ThreadID: in.threads[i], State: StateQueued, Priority: c.priority, SlotType: c.slotType,
		Input: in.values[i], Attempt: 1, MaxAttempts: c.maxAttempts, Timeout: time.Duration(c.timeoutMS) * time.Millisecond,
		RequestID: in.requestIDs[i], CreateTime: c.createTime,
	}
}

// GetRun returns a run.
func (s *Store) GetRun(ctx context.Context, tenant string, id uuid.UUID) (*Run, error) {
	r, err := scanRun(s.pool.QueryRow(ctx, `SELECT `+runColumns+` FROM runs WHERE tenant_id = $1 AND id = $2`, tenant, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("reading run %s: %w", id, err)
	}
	return r, nil
}

// RunKey names a run of a tenant.
type RunKey struct {
	Tenant string
	ID     uuid.UUID
}

// getRunsStatement is GetRuns' statement. The ids reach the planner as an InitPlan's value
// ((SELECT $1)), not as the array itself: a custom plan sized to an array of fewer than ten
// ids costs less than the generic plan, which guesses ten, so PostgreSQL planned the
// statement afresh at every call (~70 µs on an idle server for a lone waiter's id, more
// than its execution). Hidden, both cost the same and the generic plan, an index probe per
// id, is kept from the sixth call whatever the batch's size (BenchmarkGroupedReads,
// TestGroupedReadsKeepTheirGenericPlans).
const getRunsStatement = `SELECT ` + runColumns + ` FROM runs WHERE id = ANY((SELECT $1::uuid[])::uuid[])`

// GetRuns reads runs in one statement, from the primary (as GetRun): the result holds
// the runs found, by key; a key of no run (or of another tenant's run) is absent.
func (s *Store) GetRuns(ctx context.Context, keys []RunKey) (map[RunKey]*Run, error) {
	ids := make([]uuid.UUID, len(keys))
	for i, k := range keys {
		ids[i] = k.ID
	}
	rows, err := s.pool.Query(ctx, getRunsStatement, ids)
	if err != nil {
		return nil, fmt.Errorf("reading %d runs: %w", len(keys), err)
	}
	found, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Run, error) { return scanRun(row) })
	if err != nil {
		return nil, fmt.Errorf("reading %d runs: %w", len(keys), err)
	}
	want := make(map[RunKey]bool, len(keys))
	for _, k := range keys {
		want[k] = true
	}
	out := make(map[RunKey]*Run, len(found))
	for _, r := range found {
		if k := (RunKey{Tenant: r.TenantID, ID: r.ID}); want[k] {
			out[k] = r
		}
	}
	return out, nil
}

// RunFilter selects runs in ListRuns. Zero fields select everything.
type RunFilter struct {
	State       RunState
	AssistantID string
}

// RunCursor is the position after which a page of ListRuns starts.
type RunCursor struct {
	CreateTime time.Time
	ID         uuid.UUID
}

// ListRuns returns up to limit runs, newest first, after the cursor (nil = from the top).
// It tolerates staleness: with a read replica, it reads there.
func (s *Store) ListRuns(ctx context.Context, tenant string, f RunFilter, limit int, after *RunCursor) ([]*Run, error) {
	sql, args := listRunsQuery(tenant, f, limit, after)
	return listStale(ctx, s, "runs", sql, args, scanRun)
}

// listRunsQuery is ListRuns' statement. It names only the filters that are set, each
// combination its own prepared statement: PostgreSQL turns to a generic plan once it looks
// no costlier than the custom ones, and the generic plan of an optional filter (an empty $3
// or assistant_id = $3) cannot use runs_list_assistant. Newest first is a backward scan of runs_list or
// runs_list_assistant (ascending since migration 19; partial on tenant_id IS NOT NULL since
// migration 22, which the tenant_id = $1 of every listing implies).
func listRunsQuery(tenant string, f RunFilter, limit int, after *RunCursor) (string, []any) {
	sql := `SELECT ` + runColumns + ` FROM runs WHERE tenant_id = $1`
	args := []any{tenant, limit}
	if f.State != 0 {
		args = append(args, f.State)
		sql += fmt.Sprintf(" AND state = $%d", len(args))
	}
	if f.AssistantID != "" {
		args = append(args, f.AssistantID)
		sql += fmt.Sprintf(" AND assistant_id = $%d", len(args))
	}
	if after != nil {
		args = append(args, after.CreateTime, after.ID)
		sql += fmt.Sprintf(" AND (create_time, id) < ($%d, $%d)", len(args)-1, len(args))
	}
	return sql + " ORDER BY create_time DESC, id DESC LIMIT $2", args
}

// CancelRun cancels a run: a queued or interrupted run ends CANCELLED at once; a running
// one is marked and its scheduler stops it on its worker, after which it ends CANCELLED.
// Cancelling a finished run changes nothing. It returns the run as it is after the call.
func (s *Store) CancelRun(ctx context.Context, tenant string, id uuid.UUID) (*Run, error) {
	var out *Run
	// Cancelling a run waiting on a thread while the thread's active run ends can deadlock
	// (the ending run's trigger locks the waiting run to promote it; the cancel's trigger
	// waits for the thread row): PostgreSQL rolls one back, and the cancel is tried again.
	err := s.retryDeadlock(func() error {
		return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			var err error
			out, err = cancelInTx(ctx, tx, tenant, id)
			return err
		})
	})
	if errors.Is(err, ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("cancelling run %s: %w", id, err)
	}
	return out, nil
}

func cancelInTx(ctx context.Context, tx pgx.Tx, tenant string, id uuid.UUID) (*Run, error) {
	// Queue row first, then the run row: the order claims use, so the two never deadlock.
	if _, err := tx.Exec(ctx, `DELETE FROM run_queue WHERE run_id = $1 AND tenant_id = $2`, id, tenant); err != nil {
		return nil, err
	}
	r, err := scanRun(tx.QueryRow(ctx, `SELECT `+runColumns+` FROM runs WHERE tenant_id = $1 AND id = $2 FOR UPDATE`, tenant, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	switch r.State {
	case StateQueued, StateInterrupted:
		if r.ThreadID != "" {
			// A run waiting behind its thread's active run (locked above, as a settling
			// thread locks the run it promotes) leaves the thread's queue.
			if _, err := tx.Exec(ctx, `DELETE FROM thread_queue WHERE run_id = $1`, id); err != nil {
				return nil, err
			}
		}
		r, err = scanRun(tx.QueryRow(ctx, `UPDATE runs SET state = 5, end_time = now(), error = 'cancelled',
			next_attempt_time = NULL WHERE id = $1 RETURNING `+runColumns, id))
		if err != nil {
			return nil, err
		}
		return r, appendEvent(ctx, tx, tenant, id, "state", map[string]any{"state": "CANCELLED"})
	case StateRunning:
		if !r.CancelRequested {
			// On the lease too, where the schedulers look for requests (migration 24).
			if _, err := tx.Exec(ctx, `WITH r AS (UPDATE runs SET cancel_requested = true WHERE id = $1)
				UPDATE run_leases SET cancel_requested = true WHERE run_id = $1`, id); err != nil {
				return nil, err
			}
			if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, CancelChannel, id.String()); err != nil {
				return nil, err
			}
			r.CancelRequested = true
		}
	}
	return r, nil
}

// StateError reports a transition the run's state does not allow.
type StateError struct {
	State RunState
	Want  RunState
}

func (e *StateError) Error() string {
	return fmt.Sprintf("run is %s, not %s", stateName(e.State), stateName(e.Want))
}

// ResumeRun queues an INTERRUPTED run again; its interrupted step is called with value as
// "resume". Any other state fails with *StateError.
func (s *Store) ResumeRun(ctx context.Context, tenant string, id uuid.UUID, value any) (*Run, error) {
	b, err := jsonenc.Marshal(value)
	if err != nil {
		return nil, fmt.Errorf("encoding resume value: %w", err)
	}
	var out *Run
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		r, err := scanRun(tx.QueryRow(ctx, `SELECT `+runColumns+` FROM runs WHERE tenant_id = $1 AND id = $2 FOR UPDATE`, tenant, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if r.State != StateInterrupted {
			return &StateError{State: r.State, Want: StateInterrupted}
		}
		out, err = scanRun(tx.QueryRow(ctx, `WITH `+writeOutRunning("$1")+`
			UPDATE runs SET state = 1, resume = $2, prompt = NULL, worker_id = NULL, `+clearRunning+`
			WHERE id = $1 RETURNING `+runColumns, id, b))
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, enqueue("runs", "now()")+` WHERE id = $1`, id); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, QueueChannel, out.SlotType); err != nil {
			return err
		}
		return appendEvent(ctx, tx, tenant, id, "state", map[string]any{"state": "QUEUED", "resumed": true})
	})
	var se *StateError
	if errors.Is(err, ErrNotFound) || errors.As(err, &se) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("resuming run %s: %w", id, err)
	}
	return out, nil
}

func appendEvent(ctx context.Context, tx pgx.Tx, tenant string, run uuid.UUID, typ string, data map[string]any) error {
	b, err := jsonenc.Marshal(data)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO run_events (run_id, tenant_id, type, data) VALUES ($1, $2, $3, $4)`, run, tenant, typ, b)
	return err
}
