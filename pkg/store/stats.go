package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
)

// SlotTypeStats counts the runs of one slot type.
type SlotTypeStats struct {
	SlotType string
	// Queued are runnable now; Delayed wait for a retry backoff.
	Queued, Delayed, Running int64
}

// PoolStats describes one worker pool.
type PoolStats struct {
	Pool                          string
	WorkersReady, WorkersDraining int32
	// Slots sums the slots of the pool's live workers by type.
	Slots []SlotCount
}

// ClusterStats reads queue depth per slot type and slot use per pool, cluster-wide.
func (s *Store) ClusterStats(ctx context.Context) ([]SlotTypeStats, []PoolStats, error) {
	byType := make(map[string]*SlotTypeStats)
	get := func(t string) *SlotTypeStats {
		if st, ok := byType[t]; ok {
			return st
		}
		st := &SlotTypeStats{SlotType: t}
		byType[t] = st
		return st
	}
	rows, err := s.pool.Query(ctx, `SELECT slot_type, count(*) FILTER (WHERE available_time <= now()),
		count(*) FILTER (WHERE available_time > now()) FROM run_queue GROUP BY slot_type`)
	if err != nil {
		return nil, nil, fmt.Errorf("reading queue depth: %w", err)
	}
	for rows.Next() {
		var t string
		var q, d int64
		if err := rows.Scan(&t, &q, &d); err != nil {
			rows.Close()
			return nil, nil, err
		}
		st := get(t)
		st.Queued, st.Delayed = q, d
	}
	rows.Close()
	rows, err = s.pool.Query(ctx, `SELECT slot_type, count(*) FROM run_leases GROUP BY slot_type`)
	if err != nil {
		return nil, nil, fmt.Errorf("reading running runs: %w", err)
	}
	for rows.Next() {
		var t string
		var n int64
		if err := rows.Scan(&t, &n); err != nil {
			rows.Close()
			return nil, nil, err
		}
		get(t).Running = n
	}
	rows.Close()

	pools := make(map[string]*PoolStats)
	slots := make(map[string]map[string]*SlotCount)
	rows, err = s.pool.Query(ctx, `SELECT pool, state, slots FROM workers WHERE state <> 3`)
	if err != nil {
		return nil, nil, fmt.Errorf("reading workers: %w", err)
	}
	for rows.Next() {
		var pool string
		var state WorkerState
		var raw []byte
		if err := rows.Scan(&pool, &state, &raw); err != nil {
			rows.Close()
			return nil, nil, err
		}
		var counts []SlotCount
		if err := json.Unmarshal(raw, &counts); err != nil {
			rows.Close()
			return nil, nil, err
		}
		p, ok := pools[pool]
		if !ok {
			p = &PoolStats{Pool: pool}
			pools[pool] = p
			slots[pool] = make(map[string]*SlotCount)
		}
		if state == WorkerDraining {
			p.WorkersDraining++
		} else {
			p.WorkersReady++
		}
		for _, c := range counts {
			sc, ok := slots[pool][c.Type]
			if !ok {
				sc = &SlotCount{Type: c.Type}
				slots[pool][c.Type] = sc
			}
			sc.Total += c.Total
			sc.Used += c.Used
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}

	types := make([]SlotTypeStats, 0, len(byType))
	for _, st := range byType {
		types = append(types, *st)
	}
	sort.Slice(types, func(i, j int) bool { return types[i].SlotType < types[j].SlotType })
	out := make([]PoolStats, 0, len(pools))
	for name, p := range pools {
		for _, sc := range slots[name] {
			p.Slots = append(p.Slots, *sc)
		}
		sort.Slice(p.Slots, func(i, j int) bool { return p.Slots[i].Type < p.Slots[j].Type })
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pool < out[j].Pool })
	return types, out, nil
}
