package store

import (
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/require"
)

// uuid.UUID values, alone and in slices, encode to the same binary as their 16 bytes.
func TestUUIDEncodesAsBytes(t *testing.T) {
	t.Parallel()
	m := pgtype.NewMap()
	m.TryWrapEncodePlanFuncs = append([]pgtype.TryWrapEncodePlanFunc{tryWrapUUID}, m.TryWrapEncodePlanFuncs...)
	ids := []uuid.UUID{uuid.New(), uuid.New()}
	raw := [][16]byte{ids[0], ids[1]}
	got, err := m.Encode(pgtype.UUIDArrayOID, pgtype.BinaryFormatCode, ids, nil)
	require.NoError(t, err)
	want, err := m.Encode(pgtype.UUIDArrayOID, pgtype.BinaryFormatCode, raw, nil)
	require.NoError(t, err)
	require.Equal(t, want, got)
	got, err = m.Encode(pgtype.UUIDOID, pgtype.BinaryFormatCode, ids[0], nil)
	require.NoError(t, err)
	require.Equal(t, ids[0][:], got)
}

func BenchmarkUUIDEncode(b *testing.B) {
	ids := make([]uuid.UUID, 8)
	for i := range ids {
		ids[i] = uuid.New()
	}
	for _, wrapped := range []bool{false, true} {
		m := pgtype.NewMap()
		name := "pgx-default"
		if wrapped {
			m.TryWrapEncodePlanFuncs = append([]pgtype.TryWrapEncodePlanFunc{tryWrapUUID}, m.TryWrapEncodePlanFuncs...)
			name = "registered"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			var buf []byte
			for b.Loop() {
				var err error
				if buf, err = m.Encode(pgtype.UUIDArrayOID, pgtype.BinaryFormatCode, ids, buf[:0]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A uuid column scans into a uuid.UUID as uuid.UUID's own Scan would have it, without the
// detour through text: binary and text values alike, NULL leaving the UUID alone.
func TestUUIDScansFromBytes(t *testing.T) {
	t.Parallel()
	m := pgtype.NewMap()
	registerUUIDOn(m)
	id := uuid.New()
	for _, format := range []int16{pgtype.BinaryFormatCode, pgtype.TextFormatCode} {
		src := id[:]
		if format == pgtype.TextFormatCode {
			src = []byte(id.String())
		}
		var got uuid.UUID
		plan := m.PlanScan(pgtype.UUIDOID, format, &got)
		_, direct := plan.(uuidScanPlan)
		require.Equal(t, format == pgtype.BinaryFormatCode, direct, "format %d: planned %T", format, plan)
		require.NoError(t, plan.Scan(src, &got))
		require.Equal(t, id, got)

		var want uuid.UUID // what pgx without the wrapper gives
		require.NoError(t, pgtype.NewMap().Scan(pgtype.UUIDOID, format, src, &want))
		require.Equal(t, want, got)

		kept := uuid.New()
		require.NoError(t, m.Scan(pgtype.UUIDOID, format, nil, &kept))
		stillKept := kept
		require.NoError(t, pgtype.NewMap().Scan(pgtype.UUIDOID, format, nil, &stillKept))
		require.Equal(t, stillKept, kept, "NULL")
	}
	var got uuid.UUID
	require.ErrorContains(t, m.Scan(pgtype.UUIDOID, pgtype.BinaryFormatCode, []byte{1, 2}, &got), "invalid length for uuid")
	// Other targets and arrays keep pgx's own plans.
	var raw pgtype.UUID
	require.NoError(t, m.Scan(pgtype.UUIDOID, pgtype.BinaryFormatCode, id[:], &raw))
	require.Equal(t, [16]byte(id), raw.Bytes)
}

func BenchmarkUUIDScan(b *testing.B) {
	id := uuid.New()
	for _, wrapped := range []bool{false, true} {
		m := pgtype.NewMap()
		name := "pgx-default"
		if wrapped {
			registerUUIDOn(m)
			name = "registered"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			var got uuid.UUID
			plan := m.PlanScan(pgtype.UUIDOID, pgtype.BinaryFormatCode, &got)
			for b.Loop() {
				if err := plan.Scan(id[:], &got); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
