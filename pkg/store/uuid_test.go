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
