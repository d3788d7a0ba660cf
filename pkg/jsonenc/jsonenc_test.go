package jsonenc

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// Marshal writes what json.Marshal writes, byte for byte, and fails where it fails.
func TestMarshalMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(5, 6))
	strs := []string{"", "a", "plain text", `q"uote`, `back\slash`, "<b>&amp;</b>", "tab\tnl\n", "\x00\x1f", "\x7f", "é", "😀",
		"\u2028\u2029", "\xff\xfe", "ok-_./:;=?@[]^`{|}~"}
	floats := []float64{0, math.Copysign(0, -1), 1, -1, 0.1, 1.5e300, -2.5e-300, 1e21, 1e20, 999999999999999999999, 1e-6, 9.99e-7,
		1e-7, 123456789.125, 3.141592653589793, float64(1 << 53), -1e-9, 5e-324, math.MaxFloat64}
	var value func(depth int) any
	value = func(depth int) any {
		switch k := rng.IntN(9); {
		case k == 0:
			return nil
		case k == 1:
			return rng.IntN(2) == 0
		case k == 2:
			return strs[rng.IntN(len(strs))]
		case k == 3:
			return floats[rng.IntN(len(floats))]
		case k == 4:
			return rng.NormFloat64() * math.Pow(10, float64(rng.IntN(40)-20))
		case k == 5 && depth < 4:
			l := make([]any, rng.IntN(4))
			for i := range l {
				l[i] = value(depth + 1)
			}
			return l
		case k == 6 && depth < 4:
			m := map[string]any{}
			for range rng.IntN(5) {
				m[strs[rng.IntN(len(strs))]] = value(depth + 1)
			}
			return m
		case k == 7:
			return []int{1, 2} // not decoded JSON: json.Marshal's own encoding, in place
		default:
			return rng.IntN(1000)
		}
	}
	cases := []any{map[string]any{}, []any{}, map[string]any(nil), []any(nil), json.Number("12.50"), map[string]int{"b": 1, "a": 2}}
	for range 3000 {
		cases = append(cases, map[string]any{"v": value(0), "w": value(0)})
	}
	for _, v := range cases {
		want, err := json.Marshal(v)
		require.NoError(t, err)
		got, err := Marshal(v)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got), "%#v", v)
	}
	for _, bad := range []any{math.NaN(), math.Inf(1), map[string]any{"x": []any{math.Inf(-1)}}} {
		_, want := json.Marshal(bad)
		_, got := Marshal(bad)
		require.Error(t, got)
		require.Equal(t, want.Error(), got.Error())
	}
}
