package store

import (
	"encoding/binary"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
)

// The hot statements pass their ids as []uuid.UUID and their JSON documents as [][]byte
// (uuid[] and jsonb[] parameters), and the create statement optional priorities as
// []*int32 (int[]). pgx has no fast path for these slice types: it encodes
// them element by element through reflection, boxing each element (the finish statement's
// parameters alone were 1.4 % of the all-in-one server's CPU in a burn-down, the create
// statement's more under sustained load). These codecs write those three slice types in
// PostgreSQL's binary array format directly, byte for byte as pgx would; everything else
// (other values, text format, scanning) is pgx's ArrayCodec.

// registerArraysOn replaces the uuid[], jsonb[] and int4[] types of m (registered after
// the uuid type, whose codec the uuid[] elements keep).
func registerArraysOn(m *pgtype.Map) {
	for _, t := range []struct {
		name         string
		oid, elemOID uint32
		plan         pgtype.EncodePlan
		matches      func(any) bool
	}{
		{"_uuid", pgtype.UUIDArrayOID, pgtype.UUIDOID, uuidArrayPlan{}, func(v any) bool { _, ok := v.([]uuid.UUID); return ok }},
		{"_jsonb", pgtype.JSONBArrayOID, pgtype.JSONBOID, jsonbArrayPlan{}, func(v any) bool { _, ok := v.([][]byte); return ok }},
		{"_int4", pgtype.Int4ArrayOID, pgtype.Int4OID, optInt4ArrayPlan{}, func(v any) bool { _, ok := v.([]*int32); return ok }},
	} {
		elem, ok := m.TypeForOID(t.elemOID)
		if !ok {
			continue
		}
		m.RegisterType(&pgtype.Type{Name: t.name, OID: t.oid, Codec: directArrayCodec{
			ArrayCodec: &pgtype.ArrayCodec{ElementType: elem}, plan: t.plan, matches: t.matches}})
	}
}

// directArrayCodec is pgx's ArrayCodec, planning plan for the binary encoding of the
// values matches accepts.
type directArrayCodec struct {
	*pgtype.ArrayCodec
	plan    pgtype.EncodePlan
	matches func(any) bool
}

func (c directArrayCodec) PlanEncode(m *pgtype.Map, oid uint32, format int16, value any) pgtype.EncodePlan {
	if format == pgtype.BinaryFormatCode && c.matches(value) {
		return c.plan
	}
	return c.ArrayCodec.PlanEncode(m, oid, format, value)
}

// appendArrayHeader appends the header of a one-dimensional array of n elements of
// elemOID (lower bound 1), as pgx writes it (an empty array too has one dimension, of
// length 0). It returns the offset of the has-nulls flag.
func appendArrayHeader(buf []byte, n int, elemOID uint32) ([]byte, int) {
	buf = binary.BigEndian.AppendUint32(buf, 1) // dimensions
	flag := len(buf)
	buf = binary.BigEndian.AppendUint32(buf, 0) // has nulls: set later
	buf = binary.BigEndian.AppendUint32(buf, elemOID)
	buf = binary.BigEndian.AppendUint32(buf, uint32(n))
	return binary.BigEndian.AppendUint32(buf, 1), flag // lower bound
}

// appendArray appends vs as a one-dimensional array of elemOID: null tells the NULL
// elements, elem appends an element's binary value.
func appendArray[T any](buf []byte, vs []T, elemOID uint32, null func(T) bool, elem func([]byte, T) []byte) []byte {
	buf, flag := appendArrayHeader(buf, len(vs), elemOID)
	for _, v := range vs {
		if null(v) {
			binary.BigEndian.PutUint32(buf[flag:], 1)
			buf = binary.BigEndian.AppendUint32(buf, 0xFFFFFFFF) // length -1: NULL
			continue
		}
		at := len(buf)
		buf = elem(append(buf, 0, 0, 0, 0), v)
		binary.BigEndian.PutUint32(buf[at:], uint32(len(buf)-at-4))
	}
	return buf
}

// uuidArrayPlan encodes a []uuid.UUID as uuid[]: a nil slice is NULL.
type uuidArrayPlan struct{}

func (uuidArrayPlan) Encode(value any, buf []byte) ([]byte, error) {
	ids := value.([]uuid.UUID)
	if ids == nil {
		return nil, nil
	}
	return appendArray(buf, ids, pgtype.UUIDOID, func(uuid.UUID) bool { return false },
		func(b []byte, id uuid.UUID) []byte { return append(b, id[:]...) }), nil
}

// jsonbArrayPlan encodes a [][]byte of JSON documents as jsonb[] (each element version 1
// of jsonb's binary format: a 1, then the text): a nil slice is NULL, a nil element a NULL
// element. As with pgx, the documents are not checked here (PostgreSQL does).
type jsonbArrayPlan struct{}

func (jsonbArrayPlan) Encode(value any, buf []byte) ([]byte, error) {
	docs := value.([][]byte)
	if docs == nil {
		return nil, nil
	}
	return appendArray(buf, docs, pgtype.JSONBOID, func(d []byte) bool { return d == nil },
		func(b, d []byte) []byte { return append(append(b, 1), d...) }), nil
}

// optInt4ArrayPlan encodes a []*int32 as int4[]: a nil slice is NULL, a nil element a
// NULL element.
type optInt4ArrayPlan struct{}

func (optInt4ArrayPlan) Encode(value any, buf []byte) ([]byte, error) {
	vs := value.([]*int32)
	if vs == nil {
		return nil, nil
	}
	return appendArray(buf, vs, pgtype.Int4OID, func(v *int32) bool { return v == nil },
		func(b []byte, v *int32) []byte { return binary.BigEndian.AppendUint32(b, uint32(*v)) }), nil
}

func (optInt4ArrayPlan) directArray() {}
func (uuidArrayPlan) directArray()    {}
func (jsonbArrayPlan) directArray()   {}
