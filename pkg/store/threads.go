package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrThreadBusy means the thread has an active run and the policy refuses another.
var ErrThreadBusy = errors.New("thread has an active run")

// ThreadNotFoundError reports a thread a run referred to that does not exist.
type ThreadNotFoundError struct {
	// ID is the thread id.
	ID string
}

func (e *ThreadNotFoundError) Error() string {
	return fmt.Sprintf("thread %q does not exist", "threads/"+e.ID)
}

// Is makes errors.Is(err, ErrNotFound) true.
func (e *ThreadNotFoundError) Is(target error) bool { return target == ErrNotFound }

// Thread is a stored thread.
type Thread struct {
	TenantID    string
	ID          string
	Metadata    map[string]any
	State       map[string]any
	StateRunID  *uuid.UUID
	StateTime   *time.Time
	ActiveRunID *uuid.UUID
	CreateTime  time.Time
	UpdateTime  time.Time
}

const threadColumns = `tenant_id, id, metadata, state, state_run_id, state_time, active_run_id, create_time, update_time`

func scanThread(row pgx.Row) (*Thread, error) {
	var t Thread
	var metadata, state []byte
	if err := row.Scan(&t.TenantID, &t.ID, &metadata, &state, &t.StateRunID, &t.StateTime, &t.ActiveRunID,
		&t.CreateTime, &t.UpdateTime); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(metadata, &t.Metadata); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(state, &t.State); err != nil {
		return nil, err
	}
	return &t, nil
}

// joinThread applies the multitask policy to a run just inserted on a thread: an idle
// thread makes it active and queues it; a busy one rejects it, or keeps it waiting
// (enqueue), or cancels the active run first (interrupt). Waiting runs are promoted by the
// runs_thread_settle trigger when the active run ends.
func joinThread(ctx context.Context, tx pgx.Tx, r *Run, policy Multitask) error {
	var active *uuid.UUID
	err := tx.QueryRow(ctx, `SELECT active_run_id FROM threads WHERE tenant_id = $1 AND id = $2 FOR UPDATE`,
		r.TenantID, r.ThreadID).Scan(&active)
	if errors.Is(err, pgx.ErrNoRows) {
		return &ThreadNotFoundError{ID: r.ThreadID}
	}
	if err != nil {
		return err
	}
	if active == nil {
		if _, err := tx.Exec(ctx, `UPDATE threads SET active_run_id = $3, update_time = now() WHERE tenant_id = $1 AND id = $2`,
			r.TenantID, r.ThreadID, r.ID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, enqueue("runs", "now()")+` WHERE id = $1`, r.ID)
		return err
	}
	switch policy {
	case MultitaskEnqueue, MultitaskInterrupt:
		// The run waits behind the active one; it is queued first, so that cancelling
		// the active run (interrupt) promotes it.
		if _, err := tx.Exec(ctx, `INSERT INTO thread_queue (run_id, tenant_id, thread_id, seq)
			SELECT id, tenant_id, thread_id, seq FROM runs WHERE id = $1`, r.ID); err != nil {
			return err
		}
		if policy == MultitaskEnqueue {
			return nil
		}
		_, err := cancelInTx(ctx, tx, r.TenantID, *active)
		return err
	default:
		return &ThreadBusyError{Active: *active}
	}
}

// ThreadBusyError is ErrThreadBusy for a run created on a thread with the reject policy:
// Active is the run in its way (the thread's active run, or an earlier run of the same
// batch on the thread), Run the refused run's index in the batch.
type ThreadBusyError struct {
	Active uuid.UUID
	Run    int
}

func (e *ThreadBusyError) Error() string {
	return fmt.Sprintf("%v (runs/%s); wait for it, cancel it, or create the run with multitask \"enqueue\" or \"interrupt\"", ErrThreadBusy, e.Active)
}

// Is makes errors.Is(err, ErrThreadBusy) true.
func (e *ThreadBusyError) Is(target error) bool { return target == ErrThreadBusy }

// lockThreads selects and locks threads in (tenant, id) order, as every writer of threads
// does (creates, claims, finishes): two writers that lock threads in different orders can
// deadlock. keys is a query of the threads, (tenant_id, thread_id), distinct and in that
// order; each is locked in keys' order (LATERAL: one index probe each) with strength
// (UPDATE, NO KEY UPDATE, SHARE), and the statement returns columns of th, the threads'
// rows (tenant_id, id, state, active_run_id).
func lockThreads(keys, strength, columns string) string {
	return `SELECT ` + columns + ` FROM (` + keys + `) k CROSS JOIN LATERAL (
			SELECT th.tenant_id, th.id, th.state, th.active_run_id FROM threads th
			WHERE th.tenant_id = k.tenant_id AND th.id = k.thread_id
			FOR ` + strength + `
		) th`
}

// threadsOfRuns is lockThreads' keys for the threads of the runs ids (an SQL expression
// of a uuid array).
func threadsOfRuns(ids string) string {
	return `SELECT DISTINCT x.tenant_id, x.thread_id FROM runs x
		WHERE x.id = ANY(` + ids + `) AND x.thread_id IS NOT NULL ORDER BY x.tenant_id, x.thread_id`
}

// joinThreadsLock locks the threads $2 of tenant $1 (a batch's, some of them empty), as
// lockThreads does, and returns each one's id and active run.
var joinThreadsLock = lockThreads(`SELECT DISTINCT $1::text AS tenant_id, x.thread_id FROM unnest($2::text[]) AS x(thread_id) ORDER BY 2`,
	"UPDATE", "th.id, th.active_run_id")

// joinThreads applies the multitask policy to the runs this call created on threads, in
// the batch's order, as joinThread does run by run. The create statement does the same
// itself (createStatement); this transaction's path serves the batches it refuses with
// AST10, in which a run interrupts a busy thread. It locks every thread of the batch at
// once, in id order (two batches that name the same threads in other orders would
// deadlock locking them run by run), and writes what the policies decide in one round
// trip: the threads' new active runs and their queue rows, the runs that wait. A batch in
// which a run would interrupt a busy thread (cancel its active run) joins run by run
// after the lock.
func joinThreads(ctx context.Context, tx pgx.Tx, tenant string, out []*Run, in createInput, runs []NewRun) error {
	rows, err := tx.Query(ctx, joinThreadsLock, tenant, in.threads)
	if err != nil {
		return err
	}
	active := make(map[string]*uuid.UUID)
	var (
		id  string
		cur *uuid.UUID
	)
	if _, err := pgx.ForEachRow(rows, []any{&id, &cur}, func() error {
		active[id] = nil
		if cur != nil { // a copy: the scan may write the next row's id where cur points
			run := *cur
			active[id] = &run
		}
		return nil
	}); err != nil {
		return err
	}
	var activeThreads []string
	var activated, waiting []uuid.UUID
	for i, r := range out {
		// Only runs this call created join their thread (not an earlier request's).
		if r.ThreadID == "" || r.ID != in.ids[i] {
			continue
		}
		cur, ok := active[r.ThreadID]
		switch {
		case !ok:
			return &ThreadNotFoundError{ID: r.ThreadID}
		case cur == nil:
			active[r.ThreadID] = &r.ID
			activeThreads, activated = append(activeThreads, r.ThreadID), append(activated, r.ID)
		case runs[i].Multitask == MultitaskEnqueue:
			waiting = append(waiting, r.ID)
		case runs[i].Multitask == MultitaskInterrupt:
			return joinThreadsOneByOne(ctx, tx, out, in, runs)
		default:
			return &ThreadBusyError{Active: *cur, Run: i}
		}
	}
	write := &pgx.Batch{}
	if len(activated) > 0 {
		write.Queue(`UPDATE threads t SET active_run_id = x.run_id, update_time = now()
			FROM unnest($2::text[], $3::uuid[]) AS x(thread_id, run_id) WHERE t.tenant_id = $1 AND t.id = x.thread_id`,
			tenant, activeThreads, activated)
		write.Queue(enqueue("runs", "now()")+` WHERE id = ANY($1)`, activated)
	}
	if len(waiting) > 0 {
		write.Queue(`INSERT INTO thread_queue (run_id, tenant_id, thread_id, seq)
			SELECT id, tenant_id, thread_id, seq FROM runs WHERE id = ANY($1)`, waiting)
	}
	if write.Len() == 0 {
		return nil
	}
	return tx.SendBatch(ctx, write).Close()
}

// joinThreadsOneByOne is joinThreads run by run (joinThread), the threads locked.
func joinThreadsOneByOne(ctx context.Context, tx pgx.Tx, out []*Run, in createInput, runs []NewRun) error {
	for i, r := range out {
		if r.ThreadID != "" && r.ID == in.ids[i] {
			if err := joinThread(ctx, tx, r, runs[i].Multitask); err != nil {
				var busy *ThreadBusyError
				if errors.As(err, &busy) {
					busy.Run = i
				}
				return err
			}
		}
	}
	return nil
}

// CreateThread stores a thread with an initial state.
func (s *Store) CreateThread(ctx context.Context, tenant, id string, metadata, state map[string]any) (*Thread, error) {
	md, err := configJSON(metadata)
	if err != nil {
		return nil, err
	}
	st, err := configJSON(state)
	if err != nil {
		return nil, err
	}
	t, err := scanThread(s.pool.QueryRow(ctx, `INSERT INTO threads (tenant_id, id, metadata, state)
		VALUES ($1, $2, $3, $4) RETURNING `+threadColumns, tenant, id, md, st))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return nil, ErrAlreadyExists
	}
	if err != nil {
		return nil, fmt.Errorf("creating thread %s: %w", id, err)
	}
	return t, nil
}

// GetThread returns a thread.
func (s *Store) GetThread(ctx context.Context, tenant, id string) (*Thread, error) {
	t, err := scanThread(s.pool.QueryRow(ctx, `SELECT `+threadColumns+` FROM threads WHERE tenant_id = $1 AND id = $2`, tenant, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("reading thread %s: %w", id, err)
	}
	return t, nil
}

// ThreadCursor is the position after which a page of ListThreads starts.
type ThreadCursor struct {
	CreateTime time.Time
	ID         string
}

// ListThreads returns up to limit threads, newest first, after the cursor.
// It tolerates staleness: with a read replica, it reads there.
func (s *Store) ListThreads(ctx context.Context, tenant string, limit int, after *ThreadCursor) ([]*Thread, error) {
	sql, args := listThreadsQuery(tenant, limit, after)
	return listStale(ctx, s, "threads", sql, args, scanThread)
}

// listThreadsQuery is ListThreads' statement: the cursor condition only when there is a
// cursor (a generic plan of "$3 IS NULL OR …" would serve both cases at once), newest first
// by a backward scan of threads_list (ascending since migration 20).
func listThreadsQuery(tenant string, limit int, after *ThreadCursor) (string, []any) {
	sql := `SELECT ` + threadColumns + ` FROM threads WHERE tenant_id = $1`
	args := []any{tenant, limit}
	if after != nil {
		sql += ` AND (create_time, id) < ($3, $4)`
		args = append(args, after.CreateTime, after.ID)
	}
	return sql + ` ORDER BY create_time DESC, id DESC LIMIT $2`, args
}

// DeleteThread deletes a thread without an active run (ErrThreadBusy otherwise).
func (s *Store) DeleteThread(ctx context.Context, tenant, id string) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var active *uuid.UUID
		err := tx.QueryRow(ctx, `SELECT active_run_id FROM threads WHERE tenant_id = $1 AND id = $2 FOR UPDATE`, tenant, id).Scan(&active)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("deleting thread %s: %w", id, err)
		}
		if active != nil {
			return fmt.Errorf("%w (runs/%s); cancel it or wait for it first", ErrThreadBusy, active)
		}
		_, err = tx.Exec(ctx, `DELETE FROM threads WHERE tenant_id = $1 AND id = $2`, tenant, id)
		return err
	})
}
