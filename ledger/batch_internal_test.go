package ledger

import (
	"context"
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

// absorb takes waiting requests into a batch under way only where that keeps each
// account's order: a request whose accounts are not all held stays, and so does every later
// request of any of its accounts. A request whose caller gave up is finished, not taken.
func TestAbsorbKeepsEachAccountsOrder(t *testing.T) {
	req := func(accs ...string) *request {
		return &request{ctx: context.Background(), cmd: batchCmd{accs: accs}, done: make(chan struct{})}
	}
	a1, ab, a2, c, b, cl := req("a"), req("a", "b"), req("a"), req("c"), req("b"), req("c")
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	cl.ctx = gone
	l := &Ledger{}
	aq := &partitionQueue{waiting: []*request{a1, ab, a2, cl, c, b}}

	took := l.absorb(aq, []string{"a", "c"}, 10)
	require.Equal(t, []*request{a1, c}, took, "a2 waits behind ab, which needs b's lease")
	require.Equal(t, []*request{ab, a2, b}, aq.waiting)
	require.ErrorIs(t, cl.err, context.Canceled)

	took = l.absorb(aq, nil, 2) // any account, room for two
	require.Equal(t, []*request{ab, a2}, took)
	require.Equal(t, []*request{b}, aq.waiting)
}
