package ledger

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// A keyless write's operation token holds the number of the request's commit that wrote it,
// not a copy of the response: after a lost reply the request answers with the response of
// that commit, which it kept. Each case stores a token as a commit would have and lets the
// request's next attempt read it. A commit that ran late — sent, its reply lost, executed
// after the next attempt had read and decided again — is why the number matters: the later
// decision's response is not the one that stands.
func TestOperationTokenNamesItsCommit(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.MustStart(t).Client()
	l, err := Open(ctx, rdb, Config{Prefix: "optok"})
	require.NoError(t, err)
	_, err = l.OpenAccount(ctx, OpenAccount{ID: "a"}, WriteOptions{})
	require.NoError(t, err)

	cmd := Deposit{Account: "a", Currency: "USD", Amount: 5}
	sentTwice := func(t *testing.T, stored string) *request {
		t.Helper()
		ref := recordRef{key: l.store.keys.ops(l.store.keys.partition("a"), time.Now()), field: newToken(), kind: "op"}
		r := &request{
			ctx: ctx, cmd: cmd, fp: fingerprint(cmd), ref: ref, sent: true,
			tokenBodies: [][]byte{[]byte(`{"commit":0}`), []byte(`{"commit":1}`)},
			lead:        make(chan struct{}, 1), done: make(chan struct{}),
		}
		require.NoError(t, rdb.HSet(ctx, ref.key, ref.field, stored).Err())
		return r
	}

	t.Run("the first commit stands", func(t *testing.T) {
		r := sentTwice(t, "0")
		rest, _, err := l.attempt(ctx, []*request{r}, false)
		require.NoError(t, err)
		require.Empty(t, rest)
		<-r.done
		require.NoError(t, r.err)
		require.JSONEq(t, `{"commit":0}`, string(r.receipt.Body), "the response of the commit that wrote the token, not the last one decided")
		require.False(t, r.receipt.Replayed, "an internal token is no client's replay")
	})
	t.Run("the second commit stands", func(t *testing.T) {
		r := sentTwice(t, "1")
		_, _, err := l.attempt(ctx, []*request{r}, false)
		require.NoError(t, err)
		<-r.done
		require.JSONEq(t, `{"commit":1}`, string(r.receipt.Body))
	})
	t.Run("a commit the request never decided", func(t *testing.T) {
		r := sentTwice(t, "2")
		_, _, err := l.attempt(ctx, []*request{r}, false)
		require.NoError(t, err)
		<-r.done
		require.ErrorIs(t, r.err, ErrInternal)
	})
	for _, stored := range []string{"", "x", "-1", "0f3a {\"operation_id\":\"a:1\"}"} {
		t.Run("corrupt "+stored, func(t *testing.T) {
			r := sentTwice(t, stored)
			_, _, err := l.attempt(ctx, []*request{r}, false)
			require.ErrorIs(t, err, ErrInternal)
		})
	}
	acc, err := l.Account(ctx, "a")
	require.NoError(t, err)
	require.Empty(t, acc.Balances, "a request answered by its token applies nothing again")
}
