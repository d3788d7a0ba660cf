package worker

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseSlots(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]map[string]int{
		"":                  {"cpu": 4},
		"8":                 {"cpu": 8},
		"cpu=4":             {"cpu": 4},
		"cpu=4,gpu=2":       {"cpu": 4, "gpu": 2},
		" cpu = 2 , tpu=1 ": {"cpu": 2, "tpu": 1},
	} {
		got, err := ParseSlots(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for in, msg := range map[string]string{
		"cpu":         "must look like type=count",
		"cpu=0":       "from 1 to 1024",
		"cpu=x":       "from 1 to 1024",
		"CPU=1":       "lower-case",
		"cpu=1,cpu=2": "appears twice",
		"0":           "from 1 to 1024",
	} {
		_, err := ParseSlots(in)
		require.ErrorContains(t, err, msg, in)
	}
	require.Equal(t, "cpu=4,gpu=2", FormatSlots(map[string]int{"gpu": 2, "cpu": 4}))
}
