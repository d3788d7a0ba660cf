package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Assistant is a stored assistant (its newest version).
type Assistant struct {
	TenantID         string
	ID               string
	Version          int64
	DisplayName      string
	Flow             string
	SlotType         string
	Priority         int32
	ConcurrencyLimit int32
	Timeout          time.Duration
	MaxAttempts      int32
	Config           map[string]any
	// GPUMemoryBytes is the free GPU memory a run needs (0 = any GPU).
	GPUMemoryBytes int64
	CreateTime     time.Time
	UpdateTime     time.Time
}

const assistantColumns = `tenant_id, id, version, display_name, flow, slot_type, priority,
	concurrency_limit, timeout_ms, max_attempts, config, create_time, update_time, gpu_memory_bytes`

func scanAssistant(row pgx.Row) (*Assistant, error) {
	var a Assistant
	var timeoutMS int64
	var config []byte
	if err := row.Scan(&a.TenantID, &a.ID, &a.Version, &a.DisplayName, &a.Flow, &a.SlotType,
		&a.Priority, &a.ConcurrencyLimit, &timeoutMS, &a.MaxAttempts, &config, &a.CreateTime, &a.UpdateTime,
		&a.GPUMemoryBytes); err != nil {
		return nil, err
	}
	a.Timeout = time.Duration(timeoutMS) * time.Millisecond
	if err := json.Unmarshal(config, &a.Config); err != nil {
		return nil, fmt.Errorf("decoding assistant config: %w", err)
	}
	return &a, nil
}

func configJSON(c map[string]any) ([]byte, error) {
	if c == nil {
		return []byte("{}"), nil
	}
	return json.Marshal(c)
}

// CreateAssistant stores a new assistant at version 1.
func (s *Store) CreateAssistant(ctx context.Context, a *Assistant) (*Assistant, error) {
	config, err := configJSON(a.Config)
	if err != nil {
		return nil, fmt.Errorf("encoding assistant config: %w", err)
	}
	var out *Assistant
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		out, err = scanAssistant(tx.QueryRow(ctx, `
			INSERT INTO assistants (tenant_id, id, version, display_name, flow, slot_type, priority,
				concurrency_limit, timeout_ms, max_attempts, config, gpu_memory_bytes)
			VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8, $9, $10, $11)
			RETURNING `+assistantColumns,
			a.TenantID, a.ID, a.DisplayName, a.Flow, a.SlotType, a.Priority, a.ConcurrencyLimit,
			a.Timeout.Milliseconds(), a.MaxAttempts, config, a.GPUMemoryBytes))
		if err != nil {
			return err
		}
		return afterAssistantWrite(ctx, tx, out, config)
	})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			return nil, ErrAlreadyExists
		}
		return nil, fmt.Errorf("creating assistant %s: %w", a.ID, err)
	}
	if out.ConcurrencyLimit > 0 {
		if err := s.ReconcileLoad(ctx); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// afterAssistantWrite records the version and the concurrency-limit row of a.
func afterAssistantWrite(ctx context.Context, tx pgx.Tx, a *Assistant, config []byte) error {
	if _, err := tx.Exec(ctx, `
		INSERT INTO assistant_versions (tenant_id, assistant_id, version, flow, config)
		VALUES ($1, $2, $3, $4, $5)`, a.TenantID, a.ID, a.Version, a.Flow, config); err != nil {
		return fmt.Errorf("recording version: %w", err)
	}
	if a.ConcurrencyLimit > 0 {
		_, err := tx.Exec(ctx, `
			INSERT INTO assistant_load (tenant_id, assistant_id, concurrency_limit)
			VALUES ($1, $2, $3)
			ON CONFLICT (tenant_id, assistant_id) DO UPDATE SET concurrency_limit = EXCLUDED.concurrency_limit`,
			a.TenantID, a.ID, a.ConcurrencyLimit)
		return err
	}
	_, err := tx.Exec(ctx, `DELETE FROM assistant_load WHERE tenant_id = $1 AND assistant_id = $2`, a.TenantID, a.ID)
	return err
}

// GetAssistant returns the newest version of an assistant.
func (s *Store) GetAssistant(ctx context.Context, tenant, id string) (*Assistant, error) {
	a, err := scanAssistant(s.pool.QueryRow(ctx, `SELECT `+assistantColumns+`
		FROM assistants WHERE tenant_id = $1 AND id = $2`, tenant, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("reading assistant %s: %w", id, err)
	}
	return a, nil
}

// ListAssistants returns up to limit assistants with ids after afterID, in id order.
// It tolerates staleness: with a read replica, it reads there.
func (s *Store) ListAssistants(ctx context.Context, tenant string, limit int, afterID string) ([]*Assistant, error) {
	return listStale(ctx, s, "assistants", `SELECT `+assistantColumns+`
		FROM assistants WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3`, []any{tenant, afterID, limit}, scanAssistant)
}

// UpdateAssistant applies update to the stored assistant under a row lock and stores the
// result as a new version. update returns an error to abort without writing.
func (s *Store) UpdateAssistant(ctx context.Context, tenant, id string, update func(*Assistant) error) (*Assistant, error) {
	var out *Assistant
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		a, err := scanAssistant(tx.QueryRow(ctx, `SELECT `+assistantColumns+`
			FROM assistants WHERE tenant_id = $1 AND id = $2 FOR UPDATE`, tenant, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		oldLimit := a.ConcurrencyLimit
		limited := oldLimit > 0
		if err := update(a); err != nil {
			return err
		}
		config, err := configJSON(a.Config)
		if err != nil {
			return fmt.Errorf("encoding assistant config: %w", err)
		}
		if limited != (a.ConcurrencyLimit > 0) {
			if err := markQueue(ctx, tx, tenant, id, !limited); err != nil {
				return err
			}
		}
		// update_time is taken last (clock_timestamp, not the transaction's start), so
		// that it tells when the change took effect: lifting a limit from a large backlog
		// first moves its queue rows (markQueue).
		out, err = scanAssistant(tx.QueryRow(ctx, `
			UPDATE assistants SET version = version + 1, display_name = $3, flow = $4, slot_type = $5,
				priority = $6, concurrency_limit = $7, timeout_ms = $8, max_attempts = $9, config = $10,
				gpu_memory_bytes = $11, update_time = clock_timestamp()
			WHERE tenant_id = $1 AND id = $2
			RETURNING `+assistantColumns,
			tenant, id, a.DisplayName, a.Flow, a.SlotType, a.Priority, a.ConcurrencyLimit,
			a.Timeout.Milliseconds(), a.MaxAttempts, config, a.GPUMemoryBytes))
		if err != nil {
			return err
		}
		if err := afterAssistantWrite(ctx, tx, out, config); err != nil {
			return err
		}
		if limited && (out.ConcurrencyLimit == 0 || out.ConcurrencyLimit > oldLimit) {
			// A lifted or raised limit makes queued runs claimable that no enqueue or
			// result announces: wake the schedulers (with the commit), or they would find
			// them only at their next poll (up to a second of idle slots).
			if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, QueueChannel, out.SlotType); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("updating assistant %s: %w", id, err)
	}
	if out.ConcurrencyLimit > 0 {
		if err := s.ReconcileLoad(ctx); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// markQueue sets the limited mark of an assistant's queued runs (migration 15) when its
// concurrency limit is added (limited) or lifted. Lifting reads the assistant's range of
// run_queue_limited; adding reads the whole queue once, as an unmarked row is found only
// by scanning (it is not indexed by assistant). Rows queued concurrently may keep the old
// mark: the claims stay correct with either (enqueue).
func markQueue(ctx context.Context, tx pgx.Tx, tenant, assistant string, limited bool) error {
	stmt := `UPDATE run_queue SET limited = false WHERE limited AND tenant_id = $1 AND assistant_id = $2`
	if limited {
		stmt = `UPDATE run_queue SET limited = true WHERE NOT limited AND tenant_id = $1 AND assistant_id = $2`
	}
	if _, err := tx.Exec(ctx, stmt, tenant, assistant); err != nil {
		return fmt.Errorf("marking the queued runs of assistant %s: %w", assistant, err)
	}
	return nil
}

// DeleteAssistant deletes an assistant. Its versions stay, so its existing runs finish.
func (s *Store) DeleteAssistant(ctx context.Context, tenant, id string) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM assistants WHERE tenant_id = $1 AND id = $2`, tenant, id)
		if err != nil {
			return fmt.Errorf("deleting assistant %s: %w", id, err)
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		return nil
	})
}

// reconcileLoad is ReconcileLoad's count: one pass over the leases, counted by assistant
// (a count per assistant scanned run_leases once for each limited assistant: with 20 of
// them and 1,000 runs running, 20 times the pages). An assistant with no lease counts 0;
// only the counts that drifted are written.
const reconcileLoad = `UPDATE assistant_load l SET running = coalesce(c.n, 0)
	FROM assistant_load k LEFT JOIN (
		SELECT r.tenant_id, r.assistant_id, count(*) AS n FROM run_leases r
		GROUP BY r.tenant_id, r.assistant_id
	) c ON c.tenant_id = k.tenant_id AND c.assistant_id = k.assistant_id
	WHERE k.tenant_id = l.tenant_id AND k.assistant_id = l.assistant_id
		AND l.running IS DISTINCT FROM coalesce(c.n, 0)`

// ReconcileLoad recounts the RUNNING runs of every assistant with a concurrency limit.
// The trigger on runs keeps the counts exact; this heals the one window it cannot see (a
// limit added while runs of that assistant change state).
//
// The load rows are locked first, in key order as claims lock them (the two never
// deadlock), and counted in a second statement: under READ COMMITTED each statement reads
// its own snapshot, so the count sees every transition committed before the locks were
// granted, and none can commit a transition of these assistants while they are held
// (claims lock the row before they claim; leaving RUNNING goes through the trigger,
// which waits for the row). Counting in the locking statement itself used the snapshot
// taken before it waited for a lock: a claim or result committed meanwhile was counted
// wrong, and an undercount let claims exceed the limit until the next recount.
func (s *Store) ReconcileLoad(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT 1 FROM assistant_load ORDER BY tenant_id, assistant_id FOR UPDATE`); err != nil {
			return err
		}
		// One pass over the leases, counted by assistant (a count per assistant scanned
		// run_leases once for each limited assistant). An assistant with no lease counts 0.
		_, err := tx.Exec(ctx, reconcileLoad)
		return err
	})
	if err != nil {
		return fmt.Errorf("reconciling assistant load: %w", err)
	}
	return nil
}
