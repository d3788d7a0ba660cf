package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// WorkerState is the state of a worker; the numbers are those of agentserver.v1.Worker.State.
type WorkerState int16

// Worker states.
const (
	WorkerReady    WorkerState = 1
	WorkerDraining WorkerState = 2
	WorkerLost     WorkerState = 3
)

// SlotCount counts the slots of one type.
type SlotCount struct {
	Type  string `json:"type"`
	Total int32  `json:"total"`
	Used  int32  `json:"used"`
}

// GPU describes one GPU of a worker.
type GPU struct {
	Index              int32  `json:"index"`
	UUID               string `json:"uuid"`
	Model              string `json:"model"`
	MemoryTotalBytes   int64  `json:"memory_total_bytes"`
	MemoryUsedBytes    int64  `json:"memory_used_bytes"`
	UtilizationPercent int32  `json:"utilization_percent"`
	TemperatureCelsius int32  `json:"temperature_celsius"`
}

// Worker is a registered worker and its inventory.
type Worker struct {
	ID               string
	Pool             string
	Hostname         string
	Labels           map[string]string
	Slots            []SlotCount
	GPUs             []GPU
	MemoryTotalBytes int64
	MemoryFreeBytes  int64
	State            WorkerState
	SchedulerID      string
	ConnectTime      time.Time
	HeartbeatTime    time.Time
}

// UpsertWorker records a worker's registration or heartbeat.
func (s *Store) UpsertWorker(ctx context.Context, w *Worker) error {
	labels, err := json.Marshal(w.Labels)
	if err != nil {
		return err
	}
	slots, err := json.Marshal(w.Slots)
	if err != nil {
		return err
	}
	gpus, err := json.Marshal(w.GPUs)
	if err != nil {
		return err
	}
	if w.GPUs == nil {
		gpus = []byte("[]")
	}
	_, err = s.pool.Exec(ctx, `
		INSERT INTO workers (id, pool, hostname, labels, slots, gpus, memory_total_bytes, memory_free_bytes,
			state, scheduler_id, connect_time, heartbeat_time)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now())
		ON CONFLICT (id) DO UPDATE SET pool = EXCLUDED.pool, hostname = EXCLUDED.hostname,
			labels = EXCLUDED.labels, slots = EXCLUDED.slots, gpus = EXCLUDED.gpus,
			memory_total_bytes = EXCLUDED.memory_total_bytes, memory_free_bytes = EXCLUDED.memory_free_bytes,
			state = EXCLUDED.state, scheduler_id = EXCLUDED.scheduler_id,
			connect_time = EXCLUDED.connect_time, heartbeat_time = now()`,
		w.ID, w.Pool, w.Hostname, labels, slots, gpus, w.MemoryTotalBytes, w.MemoryFreeBytes,
		w.State, w.SchedulerID, w.ConnectTime)
	if err != nil {
		return fmt.Errorf("recording worker %s: %w", w.ID, err)
	}
	return nil
}

// SetWorkerState changes a worker's state (e.g. LOST when its session ends), unless
// another scheduler holds its session now.
func (s *Store) SetWorkerState(ctx context.Context, id, schedulerID string, state WorkerState) error {
	_, err := s.pool.Exec(ctx, `UPDATE workers SET state = $3 WHERE id = $1 AND scheduler_id = $2`, id, schedulerID, state)
	if err != nil {
		return fmt.Errorf("setting state of worker %s: %w", id, err)
	}
	return nil
}

// MarkStaleWorkersLost marks LOST the workers whose heartbeat is older than maxAge and
// deletes LOST workers older than forgetAfter.
func (s *Store) MarkStaleWorkersLost(ctx context.Context, maxAge, forgetAfter time.Duration) error {
	_, err := s.pool.Exec(ctx, `UPDATE workers SET state = 3
		WHERE state <> 3 AND heartbeat_time < now() - $1 * interval '1 millisecond'`, maxAge.Milliseconds())
	if err != nil {
		return fmt.Errorf("marking stale workers lost: %w", err)
	}
	_, err = s.pool.Exec(ctx, `DELETE FROM workers
		WHERE state = 3 AND heartbeat_time < now() - $1 * interval '1 millisecond'`, forgetAfter.Milliseconds())
	if err != nil {
		return fmt.Errorf("forgetting lost workers: %w", err)
	}
	return nil
}

// ListWorkers returns up to limit workers with ids after afterID, in id order.
// It tolerates staleness: with a read replica, it reads there.
func (s *Store) ListWorkers(ctx context.Context, includeLost bool, limit int, afterID string) ([]*Worker, error) {
	return readStale(ctx, s, func(q querier) ([]*Worker, error) {
		rows, err := q.Query(ctx, `SELECT id, pool, hostname, labels, slots, gpus, memory_total_bytes,
				memory_free_bytes, state, scheduler_id, connect_time, heartbeat_time
			FROM workers WHERE id > $1 AND ($2 OR state <> 3) ORDER BY id LIMIT $3`, afterID, includeLost, limit)
		if err != nil {
			return nil, fmt.Errorf("listing workers: %w", err)
		}
		defer rows.Close()
		var out []*Worker
		for rows.Next() {
			var w Worker
			var labels, slots, gpus []byte
			if err := rows.Scan(&w.ID, &w.Pool, &w.Hostname, &labels, &slots, &gpus, &w.MemoryTotalBytes,
				&w.MemoryFreeBytes, &w.State, &w.SchedulerID, &w.ConnectTime, &w.HeartbeatTime); err != nil {
				return nil, err
			}
			if err := json.Unmarshal(labels, &w.Labels); err != nil {
				return nil, err
			}
			if err := json.Unmarshal(slots, &w.Slots); err != nil {
				return nil, err
			}
			if err := json.Unmarshal(gpus, &w.GPUs); err != nil {
				return nil, err
			}
			out = append(out, &w)
		}
		return out, rows.Err()
	})
}
