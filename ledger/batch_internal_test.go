package ledger

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// An atomic batch's responses are joined by encodeBody and split by splitArray without
// encoding/json when they can be: both must agree with it on any list of JSON values,
// strings with commas, brackets, quotes and escapes included.
func TestBatchBodiesRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pieces := []string{",", "[", "]", "{", "}", `"`, `\`, "a", "é", "\n", ":"}
	str := func() string {
		s := ""
		for range rng.IntN(6) {
			s += pieces[rng.IntN(len(pieces))]
		}
		return s
	}
	var value func(depth int) any
	value = func(depth int) any {
		switch k := rng.IntN(6); {
		case k == 0 || depth > 2:
			return str()
		case k == 1:
			return rng.Int64()
		case k == 2:
			return nil
		case k == 3:
			l := make([]any, rng.IntN(3))
			for i := range l {
				l[i] = value(depth + 1)
			}
			return l
		default:
			m := map[string]any{}
			for range rng.IntN(3) {
				m[str()] = value(depth + 1)
			}
			return m
		}
	}
	fast := false
	for range 2000 {
		bodies := make([]json.RawMessage, rng.IntN(5))
		for i := range bodies {
			raw, err := json.Marshal(value(0))
			require.NoError(t, err)
			bodies[i] = raw
		}
		joined, err := encodeBody(bodies)
		require.NoError(t, err)
		want, err := json.Marshal(bodies)
		require.NoError(t, err)
		require.Equal(t, string(want), string(joined))

		got, err := splitArray(joined)
		require.NoError(t, err)
		require.Len(t, got, len(bodies))
		for i := range bodies {
			require.Equal(t, string(bodies[i]), string(got[i]))
		}
		// Plain JSON (what the ledger writes for responses without escapes) is split in
		// place, without encoding/json: the elements are slices of joined.
		if len(got) > 0 && plainJSON(joined) {
			fast = true
			require.True(t, unsafe.SliceData(got[0]) == &joined[1], "split without encoding/json: %s", joined)
		}
	}
	require.True(t, fast, "some lists were plain")
}

func TestSplitArrayRefusesMalformed(t *testing.T) {
	for _, b := range []string{"", "[", "{}", `["a]`, `[{]`, `[}]`, `[1,]`, `[,1]`, `[1,,2]`, `[[1]`, `[1]]`} {
		_, err := splitArray([]byte(b))
		require.Error(t, err, b)
	}
	got, err := splitArray([]byte("[]"))
	require.NoError(t, err)
	require.Empty(t, got)
}
