package store

import (
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/require"
)

// []uuid.UUID, [][]byte and []*int32 parameters of uuid[], jsonb[] and int4[] encode to exactly pgx's own
// bytes (nil slices as NULL, empty ones, NULL elements), without reflection; other values,
// the text format and scanning stay pgx's.
func TestArraysEncodeAsPgxDoes(t *testing.T) {
	t.Parallel()
	m := pgtype.NewMap()
	registerUUIDOn(m)
	plain := pgtype.NewMap() // pgx's own encoding; uuid.UUID is encoded as its [16]byte there
	ids := []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}
	for _, tc := range []struct {
		name       string
		oid        uint32
		value, raw any
	}{
		{"uuids", pgtype.UUIDArrayOID, ids, [][16]byte{ids[0], ids[1], ids[2]}},
		{"one uuid", pgtype.UUIDArrayOID, ids[:1], [][16]byte{ids[0]}},
		{"no uuids", pgtype.UUIDArrayOID, []uuid.UUID{}, [][16]byte{}},
		{"nil uuids", pgtype.UUIDArrayOID, []uuid.UUID(nil), [][16]byte(nil)},
		{"documents", pgtype.JSONBArrayOID, [][]byte{[]byte(`{"a":1}`), []byte(`[]`), []byte(`"x"`)}, nil},
		{"documents and NULL", pgtype.JSONBArrayOID, [][]byte{[]byte(`{}`), nil, []byte(`null`)}, nil},
		{"no documents", pgtype.JSONBArrayOID, [][]byte{}, nil},
		{"nil documents", pgtype.JSONBArrayOID, [][]byte(nil), nil},
		{"optional ints", pgtype.Int4ArrayOID, []*int32{ptr(int32(7)), nil, ptr(int32(-3))}, nil},
		{"ints", pgtype.Int4ArrayOID, []*int32{ptr(int32(1 << 30))}, nil},
		{"no ints", pgtype.Int4ArrayOID, []*int32{}, nil},
		{"nil ints", pgtype.Int4ArrayOID, []*int32(nil), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := tc.raw
			if raw == nil {
				raw = tc.value
			}
			want, err := plain.Encode(tc.oid, pgtype.BinaryFormatCode, raw, nil)
			require.NoError(t, err)
			_, direct := m.PlanEncode(tc.oid, pgtype.BinaryFormatCode, tc.value).(interface{ directArray() })
			require.True(t, direct, "planned %T", m.PlanEncode(tc.oid, pgtype.BinaryFormatCode, tc.value))
			got, err := m.Encode(tc.oid, pgtype.BinaryFormatCode, tc.value, []byte("prefix"))
			require.NoError(t, err)
			if want == nil {
				require.Nil(t, got, "NULL")
				return
			}
			require.Equal(t, string(append([]byte("prefix"), want...)), string(got))
		})
	}
	// Text format and other element types go through pgx's ArrayCodec.
	got, err := m.Encode(pgtype.UUIDArrayOID, pgtype.TextFormatCode, ids[:1], nil)
	require.NoError(t, err)
	require.Equal(t, "{"+ids[0].String()+"}", string(got))
	got, err = m.Encode(pgtype.JSONBArrayOID, pgtype.BinaryFormatCode, []string{`{"a":1}`}, nil)
	require.NoError(t, err)
	want, err := plain.Encode(pgtype.JSONBArrayOID, pgtype.BinaryFormatCode, []string{`{"a":1}`}, nil)
	require.NoError(t, err)
	require.Equal(t, want, got)
	// Scanning a uuid[] keeps working.
	var back []uuid.UUID
	bin, err := plain.Encode(pgtype.UUIDArrayOID, pgtype.BinaryFormatCode, [][16]byte{ids[0], ids[1]}, nil)
	require.NoError(t, err)
	require.NoError(t, m.Scan(pgtype.UUIDArrayOID, pgtype.BinaryFormatCode, bin, &back))
	require.Equal(t, ids[:2], back)
}

func BenchmarkArrayEncode(b *testing.B) {
	ids := make([]uuid.UUID, 32)
	docs := make([][]byte, 32)
	for i := range ids {
		ids[i] = uuid.New()
		docs[i] = []byte(`{"k":"v"}`)
	}
	for _, direct := range []bool{false, true} {
		m := pgtype.NewMap()
		name := "pgx"
		if direct {
			registerUUIDOn(m)
			name = "direct"
		} else {
			m.TryWrapEncodePlanFuncs = append([]pgtype.TryWrapEncodePlanFunc{tryWrapUUID}, m.TryWrapEncodePlanFuncs...)
		}
		for _, v := range []struct {
			what  string
			oid   uint32
			value any
		}{{"uuid32", pgtype.UUIDArrayOID, ids}, {"jsonb32", pgtype.JSONBArrayOID, docs}} {
			b.Run(name+"/"+v.what, func(b *testing.B) {
				b.ReportAllocs()
				var buf []byte
				for b.Loop() {
					var err error
					if buf, err = m.Encode(v.oid, pgtype.BinaryFormatCode, v.value, buf[:0]); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func ptr[T any](v T) *T { return &v }
