package ledger_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
)

// placeHolds places n holds of amount on account, named <prefix>0..<prefix>n-1.
func placeHolds(t *testing.T, l *ledger.Ledger, account, prefix string, n int, amount int64) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s%d", prefix, i)
		_, err := l.PlaceHold(context.Background(), ledger.PlaceHold{Account: account, ID: ids[i], Currency: "USD", Amount: amount, Timeout: time.Hour})
		require.NoError(t, err)
	}
	return ids
}

// holdStatus returns the status of a hold.
func holdStatus(t *testing.T, l *ledger.Ledger, account, hold string) string {
	t.Helper()
	h, err := l.Hold(context.Background(), account, hold)
	require.NoError(t, err)
	return h.Status
}

// resolutions returns, per hold ID of account, the types of its HoldCaptured and
// HoldVoided events in order.
func resolutions(t *testing.T, l *ledger.Ledger, account string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for after := int64(0); ; {
		events, next, err := l.Events(context.Background(), account, after, ledger.MaxEventsPage)
		require.NoError(t, err)
		for _, e := range events {
			if e.Type == ledger.EventHoldCaptured || e.Type == ledger.EventHoldVoided {
				var d ledger.HoldData
				require.NoError(t, json.Unmarshal(e.Data, &d))
				out[d.HoldID] = append(out[d.HoldID], e.Type)
			}
		}
		if next == 0 {
			return out
		}
		after = next
	}
}

// TestBulkHoldsAtomic resolves a list of holds of one partition all or nothing: one capture
// or void that cannot be made refuses the whole batch and writes nothing.
func TestBulkHoldsAtomic(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "bulk"})
			fund(t, l, "bk..a", 1000)
			fund(t, l, "bk..b", 0)
			other := "bkother"
			for i := 0; l.Partition(other) == l.Partition("bk..a"); i++ {
				other = fmt.Sprintf("bkother%d", i)
			}
			fund(t, l, other, 100)
			holds := placeHolds(t, l, "bk..a", "h", 4, 100)
			_, err := l.VoidHold(ctx, "bk..a", holds[3], ledger.WriteOptions{})
			require.NoError(t, err)
			none := ledger.WriteOptions{}

			for name, tc := range map[string]struct {
				bad  ledger.BatchOp
				want error
			}{
				"exceeds the hold": {ledger.BatchOp{Type: ledger.OpCapture, Account: "bk..a", Hold: holds[2], Amount: 101}, ledger.ErrAmountExceedsHold},
				"not pending":      {ledger.BatchOp{Type: ledger.OpVoid, Account: "bk..a", Hold: holds[3]}, ledger.ErrHoldNotPending},
				"never placed":     {ledger.BatchOp{Type: ledger.OpCapture, Account: "bk..a", Hold: "nope"}, ledger.ErrNotFound},
				"to unknown":       {ledger.BatchOp{Type: ledger.OpCapture, Account: "bk..a", Hold: holds[2], To: "bk..nobody"}, ledger.ErrAccountNotFound},
			} {
				t.Run(name, func(t *testing.T) {
					before, lasting := requireConsistent(t, l, "bk..a"), lastingKeys(t, rdb)
					res, _, err := l.Batch(ctx, true, []ledger.BatchOp{
						{Type: ledger.OpCapture, Account: "bk..a", Hold: holds[0], Amount: 40, ID: "cap-key"},
						{Type: ledger.OpVoid, Account: "bk..a", Hold: holds[1]},
						tc.bad,
					}, none)
					require.NoError(t, err)
					require.ErrorIs(t, res[0].Err, ledger.ErrBatchAborted)
					require.ErrorIs(t, res[1].Err, ledger.ErrBatchAborted)
					require.ErrorIs(t, res[2].Err, tc.want)
					assert.Equal(t, before, requireConsistent(t, l, "bk..a"), "nothing changed")
					assert.Equal(t, lasting, lastingKeys(t, rdb), "nothing written for good")
					for _, h := range holds[:3] {
						assert.Equal(t, ledger.HoldPending, holdStatus(t, l, "bk..a", h))
					}
				})
			}

			t.Run("holds in several partitions are refused", func(t *testing.T) {
				oh := placeHolds(t, l, other, "oh", 1, 10)
				for _, ops := range [][]ledger.BatchOp{
					{{Type: ledger.OpVoid, Account: "bk..a", Hold: holds[0]}, {Type: ledger.OpVoid, Account: other, Hold: oh[0]}},
					// A capture to another partition is a cross-partition transfer.
					{{Type: ledger.OpCapture, Account: "bk..a", Hold: holds[0], To: other}},
				} {
					_, _, err := l.Batch(ctx, true, ops, none)
					require.ErrorIs(t, err, ledger.ErrBatchNotAtomic)
				}
				assert.Equal(t, ledger.HoldPending, holdStatus(t, l, "bk..a", holds[0]))
				assert.Equal(t, ledger.HoldPending, holdStatus(t, l, other, oh[0]))
			})

			t.Run("one hold twice is malformed", func(t *testing.T) {
				for _, atomic := range []bool{true, false} {
					_, _, err := l.Batch(ctx, atomic, []ledger.BatchOp{
						{Type: ledger.OpCapture, Account: "bk..a", Hold: holds[0]},
						{Type: ledger.OpVoid, Account: "bk..a", Hold: holds[0]},
					}, none)
					require.ErrorIs(t, err, ledger.ErrInvalid)
				}
			})

			t.Run("all resolved at once, a duplicate applies nothing", func(t *testing.T) {
				ops := []ledger.BatchOp{
					{Type: ledger.OpCapture, Account: "bk..a", Hold: holds[0], Amount: 40, ID: "cap-key"},
					{Type: ledger.OpVoid, Account: "bk..a", Hold: holds[1]},
					{Type: ledger.OpCapture, Account: "bk..a", Hold: holds[2], To: "bk..b"},
				}
				opts := ledger.WriteOptions{IdempotencyKey: "bulk-1"}
				res, replayed, err := l.Batch(ctx, true, ops, opts)
				require.NoError(t, err)
				require.False(t, replayed)
				for _, r := range res {
					require.NoError(t, r.Err)
				}
				var got []ledger.Hold
				for _, r := range res {
					var h ledger.Hold
					require.NoError(t, json.Unmarshal(r.Body, &h))
					got = append(got, h)
				}
				assert.Equal(t, []string{ledger.HoldCaptured, ledger.HoldVoided, ledger.HoldCaptured}, []string{got[0].Status, got[1].Status, got[2].Status})
				assert.Equal(t, int64(40), got[0].Captured)
				assert.Equal(t, ledger.Balance{Posted: 1000 - 40 - 100, Held: 0, Available: 1000 - 40 - 100}, balance(t, l, "bk..a"))
				assert.Equal(t, int64(100), balance(t, l, "bk..b").Posted)
				tr, err := l.GetTransfer(ctx, got[2].TransferID)
				require.NoError(t, err, "the capture's transfer is found by its ID")
				assert.Equal(t, ledger.TransferCompleted, tr.Status)

				again, replayed, err := l.Batch(ctx, true, ops, opts)
				require.NoError(t, err)
				assert.True(t, replayed)
				assert.Equal(t, res, again)
				// The capture's own key is taken: a single capture with it replays.
				rc, err := l.CaptureHold(ctx, "bk..a", holds[0], 40, "", ledger.WriteOptions{IdempotencyKey: "cap-key"})
				require.NoError(t, err)
				assert.True(t, rc.Replayed)
				assert.Equal(t, map[string][]string{
					holds[0]: {ledger.EventHoldCaptured}, holds[1]: {ledger.EventHoldVoided},
					holds[2]: {ledger.EventHoldCaptured}, holds[3]: {ledger.EventHoldVoided},
				}, resolutions(t, l, "bk..a"), "each hold resolved once")
			})
			requireVerified(t, l)
		})
	}
}

// TestBulkHoldsLoose resolves a list of holds one by one: each result says what happened to
// its hold, and a retry of the batch with the same Idempotency-Key applies nothing twice.
func TestBulkHoldsLoose(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	ctx := context.Background()
	l := MustOpen(t, rdb, ledger.Config{Prefix: "bulkl"})
	fund(t, l, "bl..a", 1000)
	fund(t, l, "elsewhere", 0)
	holds := placeHolds(t, l, "bl..a", "h", 5, 100)
	_, err := l.CaptureHold(ctx, "bl..a", holds[4], 0, "", ledger.WriteOptions{})
	require.NoError(t, err)

	// The handler gives every operation without an id one derived from the batch's key.
	ops := []ledger.BatchOp{
		{Type: ledger.OpCapture, Account: "bl..a", Hold: holds[0], ID: "k0"},
		{Type: ledger.OpCapture, Account: "bl..a", Hold: holds[1], Amount: 500, ID: "k1"}, // exceeds
		{Type: ledger.OpVoid, Account: "bl..a", Hold: holds[2], ID: "k2"},
		{Type: ledger.OpCapture, Account: "bl..a", Hold: holds[3], Amount: 30, To: "elsewhere", ID: "k3"}, // another partition
		{Type: ledger.OpVoid, Account: "bl..a", Hold: holds[4], ID: "k4"},                                 // captured already
		{Type: ledger.OpVoid, Account: "bl..a", Hold: "nope", ID: "k5"},
	}
	res, _, err := l.Batch(ctx, false, ops, ledger.WriteOptions{})
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	require.ErrorIs(t, res[1].Err, ledger.ErrAmountExceedsHold)
	require.NoError(t, res[2].Err)
	require.NoError(t, res[3].Err)
	require.ErrorIs(t, res[4].Err, ledger.ErrHoldNotPending)
	require.ErrorIs(t, res[5].Err, ledger.ErrNotFound)
	want := []string{ledger.HoldCaptured, ledger.HoldPending, ledger.HoldVoided, ledger.HoldCaptured, ledger.HoldCaptured}
	for i, h := range holds {
		assert.Equal(t, want[i], holdStatus(t, l, "bl..a", h), "hold %s", h)
		if res[i].Err == nil {
			var got ledger.Hold
			require.NoError(t, json.Unmarshal(res[i].Body, &got))
			assert.Equal(t, want[i], got.Status, "the result says what the hold became")
		}
	}
	assert.Equal(t, ledger.Balance{Posted: 1000 - 100 - 100 - 30, Held: 100, Available: 1000 - 100 - 100 - 30 - 100}, balance(t, l, "bl..a"))
	require.Eventually(t, func() bool { return balance(t, l, "elsewhere").Posted == 30 }, 5*time.Second, 10*time.Millisecond)

	again, _, err := l.Batch(ctx, false, ops, ledger.WriteOptions{})
	require.NoError(t, err)
	for i := range res {
		assert.Equal(t, res[i].Body, again[i].Body, "operations[%d] replays its answer", i)
		assert.Equal(t, res[i].Err == nil, again[i].Err == nil, "operations[%d]", i)
	}
	assert.Len(t, resolutions(t, l, "bl..a"), 4, "nothing resolved twice")
	for h, evs := range resolutions(t, l, "bl..a") {
		assert.Len(t, evs, 1, "hold %s", h)
	}
	requireVerified(t, l)
}

// TestBulkHoldsRace sends a bulk capture and a bulk void of the same holds at the same time,
// each twice (a duplicate with the same keys), atomic and not: every hold is resolved
// exactly once, and the results agree with the events.
func TestBulkHoldsRace(t *testing.T) {
	for _, atomic := range []bool{false, true} {
		t.Run(fmt.Sprintf("atomic=%v", atomic), func(t *testing.T) {
			rdb := redistest.MustStart(t).Client()
			ctx := context.Background()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "bulkr"})
			const rounds, n = 10, 8
			fund(t, l, "br..a", rounds*n*10)
			for round := range rounds {
				holds := placeHolds(t, l, "br..a", fmt.Sprintf("r%d-", round), n, 10)
				batches := map[string][]ledger.BatchOp{}
				for _, typ := range []string{ledger.OpCapture, ledger.OpVoid} {
					for i, h := range holds {
						// Each goes in a different order, so that loose batches interleave.
						if typ == ledger.OpVoid {
							h = holds[n-1-i]
						}
						batches[typ] = append(batches[typ], ledger.BatchOp{Type: typ, Account: "br..a", Hold: h, ID: fmt.Sprintf("%s-%d-%s", typ, round, h)})
					}
				}
				type outcome struct {
					typ string
					res []ledger.BatchResult
				}
				var (
					mu  sync.Mutex
					out []outcome
					wg  sync.WaitGroup
				)
				for typ, ops := range batches {
					for range 2 {
						wg.Go(func() {
							opts := ledger.WriteOptions{IdempotencyKey: fmt.Sprintf("%s-%d", typ, round)}
							res, _, err := l.Batch(ctx, atomic, append([]ledger.BatchOp(nil), ops...), opts)
							assert.NoError(t, err)
							mu.Lock()
							out = append(out, outcome{typ, res})
							mu.Unlock()
						})
					}
				}
				wg.Wait()
				events := resolutions(t, l, "br..a")
				won := map[string]string{} // hold → the type whose batch says it resolved it
				for _, o := range out {
					for i, r := range o.res {
						h := batches[o.typ][i].Hold
						if r.Err != nil {
							// A lost race says the hold is not pending (an atomic batch: one
							// hold says so, the others that the batch was aborted).
							if !errors.Is(r.Err, ledger.ErrHoldNotPending) && !(atomic && errors.Is(r.Err, ledger.ErrBatchAborted)) {
								t.Errorf("%s of hold %s: unexpected error %v", o.typ, h, r.Err)
							}
							continue
						}
						if prev, ok := won[h]; ok {
							assert.Equal(t, prev, o.typ, "hold %s: a capture and a void both succeeded", h)
						}
						won[h] = o.typ
					}
				}
				if atomic {
					for _, h := range holds {
						assert.Equal(t, won[holds[0]], won[h], "one atomic batch resolved every hold")
					}
				}
				for _, h := range holds {
					require.Len(t, events[h], 1, "hold %s resolved exactly once", h)
					want := map[string]string{ledger.OpCapture: ledger.EventHoldCaptured, ledger.OpVoid: ledger.EventHoldVoided}[won[h]]
					assert.Equal(t, want, events[h][0], "hold %s: the results agree with the event", h)
				}
			}
			requireVerified(t, l)
		})
	}
}
