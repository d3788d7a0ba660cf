package store

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// decodeObject gives what json.Unmarshal gives, the empty object included (an empty,
// non-nil map), and fails where it fails.
func TestDecodeObjectAsUnmarshal(t *testing.T) {
	t.Parallel()
	for _, in := range []string{`{}`, `{"a": 1, "b": {}}`, `{ }`, `[]`, ``, `{`} {
		var want, got map[string]any
		wantErr := json.Unmarshal([]byte(in), &want)
		gotErr := decodeObject([]byte(in), &got)
		require.Equal(t, wantErr == nil, gotErr == nil, "%q: %v / %v", in, wantErr, gotErr)
		require.Equal(t, want, got, "%q", in)
		if wantErr == nil {
			require.NotNil(t, got, "%q", in)
		}
	}
}
