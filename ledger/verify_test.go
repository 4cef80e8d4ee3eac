package ledger_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
	"github.com/tally-ledger/tally/outbox"
)

// keysOf names an account's snapshot and event stream keys, as the ledger lays them out.
func keysOf(l *ledger.Ledger, id string) (snapshot, events string) {
	snapshot = l.Prefix() + ":{" + strconv.Itoa(l.Partition(id)) + "}:acct:" + id
	return snapshot, snapshot + ":events"
}

// kinds returns the kinds of problems, in order.
func kinds(ps []ledger.Problem) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Kind
	}
	return out
}

// mustVerify runs VerifyWith and returns its report.
func mustVerify(t *testing.T, l *ledger.Ledger, opts ledger.VerifyOptions) ledger.VerifyReport {
	t.Helper()
	rep, err := l.VerifyWith(context.Background(), opts)
	require.NoError(t, err)
	return rep
}

// deposit deposits amount USD into id.
func deposit(t *testing.T, l *ledger.Ledger, id string, amount int64) {
	t.Helper()
	_, err := l.Deposit(context.Background(), ledger.Deposit{Account: id, Currency: "USD", Amount: amount}, ledger.WriteOptions{})
	require.NoError(t, err)
}

// rewriteEvent replaces the event with version v of id's stream by what edit makes of it
// (the stream is rebuilt: XADD refuses an ID below the stream's last one).
func rewriteEvent(t *testing.T, rdb redis.UniversalClient, l *ledger.Ledger, id string, v int64, edit func(e *ledger.Event)) {
	t.Helper()
	ctx := context.Background()
	_, events := keysOf(l, id)
	xs, err := rdb.XRange(ctx, events, "-", "+").Result()
	require.NoError(t, err)
	require.NoError(t, rdb.Del(ctx, events).Err())
	for _, x := range xs {
		raw := x.Values["event"].(string)
		if x.ID == strconv.FormatInt(v, 10)+"-0" {
			var e ledger.Event
			require.NoError(t, json.Unmarshal([]byte(raw), &e))
			edit(&e)
			b, err := json.Marshal(e)
			require.NoError(t, err)
			raw = string(b)
		}
		require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: events, ID: x.ID, Values: []any{"type", x.Values["type"], "event", raw}}).Err())
	}
}

// loseTail removes id's last n events and puts its snapshot back as it was before them, as
// a Redis that lost its last writes (snapshot and stream together) would leave it.
func loseTail(t *testing.T, rdb redis.UniversalClient, l *ledger.Ledger, id string, n int64) {
	t.Helper()
	ctx := context.Background()
	acc, err := l.Account(ctx, id)
	require.NoError(t, err)
	snapshot, events := keysOf(l, id)
	for v := acc.Version - n + 1; v <= acc.Version; v++ {
		require.NoError(t, rdb.XDel(ctx, events, strconv.FormatInt(v, 10)+"-0").Err())
	}
	before, err := l.Replay(ctx, id)
	require.NoError(t, err)
	remaining := allEvents(t, l, id)
	fields := []any{"v", before.Version, "t", remaining[len(remaining)-1].Time.UnixNano()}
	for c, b := range before.Balances {
		fields = append(fields, "b:"+c, b.Posted)
	}
	require.NoError(t, rdb.HSet(ctx, snapshot, fields...).Err())
	require.Equal(t, before, requireConsistent(t, l, id), "the loss is consistent: replay still equals the snapshot")
}

// TestVerifyFindsEachViolation breaks one thing at a time and checks that Verify names it
// precisely (kind, account or transfer, partition) and nothing else.
func TestVerifyFindsEachViolation(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	ctx := context.Background()
	n := 0
	fresh := func(t *testing.T) *ledger.Ledger {
		n++
		return MustOpen(t, rdb, ledger.Config{Prefix: fmt.Sprintf("v%d", n)})
	}
	noOutbox := ledger.VerifyOptions{Consumers: []string{}}

	t.Run("a clean ledger verifies", func(t *testing.T) {
		l := fresh(t)
		fund(t, l, "alice", 100)
		rep := mustVerify(t, l, ledger.VerifyOptions{})
		require.True(t, rep.OK(), "%v", rep.Problems)
		assert.Empty(t, rep.Warnings)
		assert.Equal(t, 1, rep.Accounts)
		assert.Zero(t, rep.Totals.Get("USD").Cmp(big.NewInt(100)))
		assert.Len(t, rep.Outbox, l.Partitions())
	})

	t.Run("corrupted snapshot", func(t *testing.T) {
		l := fresh(t)
		fund(t, l, "alice", 100)
		snapshot, _ := keysOf(l, "alice")
		require.NoError(t, rdb.HSet(ctx, snapshot, "b:USD", 150).Err())
		rep := mustVerify(t, l, noOutbox)
		require.Equal(t, []string{ledger.ProblemReplayMismatch, ledger.ProblemNotConserved}, kinds(rep.Problems), "%v", rep.Problems)
		p := rep.Problems[0]
		assert.Equal(t, "alice", p.Account)
		require.NotNil(t, p.Partition)
		assert.Equal(t, l.Partition("alice"), *p.Partition)
		assert.Contains(t, p.Detail, "USD posted 150 held 0 vs 100 held 0")
		assert.Equal(t, "USD", rep.Problems[1].Currency)
	})

	t.Run("a snapshot key in the wrong partition", func(t *testing.T) {
		l := fresh(t)
		fund(t, l, "alice", 100)
		wrong := (l.Partition("alice") + 1) % l.Partitions()
		stray := l.Prefix() + ":{" + strconv.Itoa(wrong) + "}:acct:alice"
		require.NoError(t, rdb.HSet(ctx, stray, "b:USD", 900).Err())
		rep := mustVerify(t, l, noOutbox)
		require.Equal(t, []string{ledger.ProblemCorruptRecord}, kinds(rep.Problems), "%v", rep.Problems)
		assert.Contains(t, rep.Problems[0].Detail, stray)
		assert.Equal(t, 1, rep.Accounts, "alice is verified once")
	})

	t.Run("altered event", func(t *testing.T) {
		l := fresh(t)
		fund(t, l, "alice", 100)
		deposit(t, l, "alice", 5)
		rewriteEvent(t, rdb, l, "alice", 2, func(e *ledger.Event) { e.Data = json.RawMessage(`{"currency":"USD","amount":1000}`) })
		rep := mustVerify(t, l, noOutbox)
		// The event's recorded balances (100) are no longer what it leaves (1000).
		require.Equal(t, []string{ledger.ProblemEventBalances, ledger.ProblemReplayMismatch, ledger.ProblemNotConserved}, kinds(rep.Problems), "%v", rep.Problems)
		assert.Equal(t, "alice", rep.Problems[1].Account)
		assert.Contains(t, rep.Problems[1].Detail, "USD posted 105 held 0 vs 1005 held 0")
	})

	t.Run("altered balances of an event", func(t *testing.T) {
		l := fresh(t)
		fund(t, l, "alice", 100)
		deposit(t, l, "alice", 5)
		rewriteEvent(t, rdb, l, "alice", 2, func(e *ledger.Event) {
			e.Balances = map[string]ledger.Balance{"USD": {Posted: 101, Available: 101}}
		})
		rep := mustVerify(t, l, noOutbox)
		require.Equal(t, []string{ledger.ProblemEventBalances}, kinds(rep.Problems), "%v", rep.Problems)
		assert.Contains(t, rep.Problems[0].Detail, "event alice:2 records balances")
	})

	t.Run("deleted event", func(t *testing.T) {
		l := fresh(t)
		fund(t, l, "alice", 100)
		deposit(t, l, "alice", 5)
		_, events := keysOf(l, "alice")
		require.NoError(t, rdb.XDel(ctx, events, "2-0").Err())
		rep := mustVerify(t, l, noOutbox)
		require.Equal(t, []string{ledger.ProblemBadEvent, ledger.ProblemNotConserved}, kinds(rep.Problems), "%v", rep.Problems)
		assert.Equal(t, "alice", rep.Problems[0].Account)
		assert.Contains(t, rep.Problems[0].Detail, "has version 3, account is at 1")

		require.NoError(t, rdb.XDel(ctx, events, "3-0").Err()) // now the stream's tail is missing
		rep = mustVerify(t, l, noOutbox)
		require.Equal(t, []string{ledger.ProblemStreamMismatch, ledger.ProblemReplayMismatch, ledger.ProblemNotConserved}, kinds(rep.Problems), "%v", rep.Problems)
		assert.Equal(t, "alice", rep.Problems[0].Account)
		assert.Contains(t, rep.Problems[0].Detail, "ends at version 1, the snapshot is at version 3")
	})

	t.Run("negative balance", func(t *testing.T) {
		l := fresh(t)
		MustOpenAccount(t, l, "debtor", true)
		_, err := l.Withdraw(ctx, ledger.Withdraw{Account: "debtor", Currency: "USD", Amount: 50}, ledger.WriteOptions{})
		require.NoError(t, err)
		require.True(t, mustVerify(t, l, noOutbox).OK(), "allowed to go negative")
		// Take the permission away in the events and the snapshot alike.
		rewriteEvent(t, rdb, l, "debtor", 1, func(e *ledger.Event) { e.Data = json.RawMessage(`{"allow_negative":false}`) })
		snapshot, _ := keysOf(l, "debtor")
		require.NoError(t, rdb.HSet(ctx, snapshot, "an", "0").Err())
		rep := mustVerify(t, l, noOutbox)
		require.Equal(t, []string{ledger.ProblemNegativeBalance}, kinds(rep.Problems), "%v", rep.Problems)
		assert.Equal(t, "debtor", rep.Problems[0].Account)
		assert.Equal(t, "USD", rep.Problems[0].Currency)
		assert.Contains(t, rep.Problems[0].Detail, "available balance -50")
	})

	t.Run("in-flight transfer", func(t *testing.T) {
		l := fresh(t)
		from, to := apart(l, "f-")
		fund(t, l, from, 500)
		fund(t, l, to, 0)
		require.NoError(t, l.StartTransfer(ctx, ledger.TransferRequest{ID: "t1", From: from, To: to, Currency: "USD", Amount: 200}))
		rep := mustVerify(t, l, noOutbox)
		require.True(t, rep.OK(), "conserved while in flight: %v", rep.Problems)
		assert.Empty(t, rep.Warnings, "not stuck yet")
		require.Len(t, rep.InFlightTransfers, 1)
		it := rep.InFlightTransfers[0]
		assert.Equal(t, ledger.InFlightTransfer{ID: "t1", From: from, To: to, Currency: "USD", Amount: 200, DebitedAt: it.DebitedAt}, it)
		assert.Zero(t, rep.InFlight.Get("USD").Cmp(big.NewInt(200)))
		assert.Zero(t, rep.Totals.Get("USD").Cmp(big.NewInt(300)))

		rep = mustVerify(t, l, ledger.VerifyOptions{Consumers: []string{}, StuckAfter: time.Nanosecond})
		require.True(t, rep.OK(), "%v", rep.Problems)
		require.Equal(t, []string{ledger.ProblemTransferStuck}, kinds(rep.Warnings))
		assert.Equal(t, "t1", rep.Warnings[0].Transfer)

		// Its record says it was credited (completed as the saga's last step completes it),
		// but the destination has no credit: lost.
		trec := transferKey(l, from, "t1")
		require.NoError(t, rdb.HSet(ctx, trec, "status", ledger.TransferCompleted, "completed_at", time.Now().UTC().Format(time.RFC3339Nano)).Err())
		require.NoError(t, rdb.ZRem(ctx, l.TransfersPendingKey(from), "t1").Err())
		rep = mustVerify(t, l, noOutbox)
		require.Equal(t, []string{ledger.ProblemTransferFlow}, kinds(rep.Problems), "%v", rep.Problems)
		assert.Equal(t, "t1", rep.Problems[0].Transfer)
		assert.Contains(t, rep.Problems[0].Detail, "has no TransferCredited")

		require.NoError(t, rdb.Del(ctx, trec).Err())
		rep = mustVerify(t, l, noOutbox)
		require.Equal(t, []string{ledger.ProblemTransferFlow}, kinds(rep.Problems), "%v", rep.Problems)
		assert.Contains(t, rep.Problems[0].Detail, "transfer record is missing")
	})

	t.Run("a source that lost its debit is caught through the credit", func(t *testing.T) {
		l := fresh(t)
		from, to := apart(l, "s-")
		fund(t, l, from, 500)
		fund(t, l, to, 0)
		res, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t2", From: from, To: to, Currency: "USD", Amount: 200})
		require.NoError(t, err)
		require.Equal(t, ledger.TransferCompleted, res.Transfer.Status)
		loseTail(t, rdb, l, from, 1) // as if the source's node failed over to a replica without the debit
		rep := mustVerify(t, l, ledger.VerifyOptions{Consumers: []string{}, OutboxSample: -1})
		require.Equal(t, []string{ledger.ProblemTransferFlow, ledger.ProblemNotConserved}, kinds(rep.Problems), "%v", rep.Problems)
		assert.Equal(t, "t2", rep.Problems[0].Transfer)
		assert.Equal(t, from, rep.Problems[0].Account)
		assert.Contains(t, rep.Problems[0].Detail, "no debit of "+from)
		rep = mustVerify(t, l, ledger.VerifyOptions{})
		assert.Contains(t, kinds(rep.Problems), ledger.ProblemLostEvents, "the outbox still has the debit")
	})

	t.Run("hold records", func(t *testing.T) {
		l := fresh(t)
		fund(t, l, "alice", 100)
		for _, h := range []string{"h1", "h2", "h3"} {
			_, err := l.PlaceHold(ctx, ledger.PlaceHold{Account: "alice", ID: h, Currency: "USD", Amount: 10, Timeout: time.Hour})
			require.NoError(t, err)
		}
		_, err := l.CaptureHold(ctx, "alice", "h3", 4, "", ledger.WriteOptions{})
		require.NoError(t, err)
		rep := mustVerify(t, l, noOutbox)
		require.True(t, rep.OK(), "%v", rep.Problems)
		assert.Equal(t, ledger.HoldCounts{Pending: 2, Captured: 1}, rep.Holds)
		assert.Zero(t, rep.Held.Get("USD").Cmp(big.NewInt(20)))
		assert.Zero(t, rep.CapturedOut.Get("USD").Cmp(big.NewInt(4)))

		p := strconv.Itoa(l.Partition("alice"))
		hold := func(id string) string { return l.Prefix() + ":{" + p + "}:hold:alice:" + id }
		require.NoError(t, rdb.HSet(ctx, hold("h1"), "amount", 99).Err())
		require.NoError(t, rdb.ZRem(ctx, l.Prefix()+":{"+p+"}:holds:expiry", "alice:h2").Err())
		require.NoError(t, rdb.HSet(ctx, hold("h3"), "status", ledger.HoldVoided).Err())
		rep = mustVerify(t, l, noOutbox)
		require.Equal(t, []string{ledger.ProblemHoldRecord, ledger.ProblemHoldRecord, ledger.ProblemHoldRecord}, kinds(rep.Problems), "%v", rep.Problems)
		got := map[string]string{}
		for _, pr := range rep.Problems {
			assert.Equal(t, "alice", pr.Account)
			got[pr.Hold] = pr.Detail
		}
		assert.Contains(t, got["h1"], "the snapshot holds 10 USD")
		assert.Contains(t, got["h1"], "the record 99 USD")
		assert.Contains(t, got["h2"], "not in the expiry index")
		assert.Contains(t, got["h3"], "the events say captured")
	})

	t.Run("an outbox consumer behind and dead letters are warnings", func(t *testing.T) {
		l := fresh(t)
		fund(t, l, "alice", 100)
		p := l.Partition("alice")
		stream := outbox.StreamKey(l.Prefix(), p)
		require.NoError(t, rdb.XGroupCreate(ctx, stream, "relay", "0").Err())
		// A relay that read the entries and died before acknowledging them.
		_, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "relay", Consumer: "dead-relay", Streams: []string{stream, ">"}}).Result()
		require.NoError(t, err)
		require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: outbox.DeadLetterKey(l.Prefix(), p), Values: []any{"event", "{}"}}).Err())
		var rep ledger.VerifyReport
		require.Eventually(t, func() bool { // until the entries were idle for MaxLag
			rep = mustVerify(t, l, ledger.VerifyOptions{MaxLag: 20 * time.Millisecond})
			return len(rep.Warnings) == 3
		}, 10*time.Second, 10*time.Millisecond)
		require.True(t, rep.OK(), "%v", rep.Problems)
		assert.ElementsMatch(t, []string{ledger.ProblemOutboxIdle, ledger.ProblemOutboxLag, ledger.ProblemDeadLetters}, kinds(rep.Warnings))
		for _, w := range rep.Warnings {
			require.NotNil(t, w.Partition, "%v", w)
			assert.Equal(t, p, *w.Partition)
		}
		op := rep.Outbox[p]
		assert.Equal(t, int64(2), op.Pending)
		assert.Equal(t, int64(2), op.IdlePending)
		assert.Equal(t, int64(1), op.DeadLetters)
		assert.True(t, op.Consumed)
	})

	t.Run("lost events that the outbox or a consumer saw", func(t *testing.T) {
		l := fresh(t)
		fund(t, l, "alice", 100)
		deposit(t, l, "alice", 5)
		fund(t, l, "bob", 7)
		loseTail(t, rdb, l, "alice", 1) // snapshot and stream agree: invisible to replay
		// A consumer's watermark says it applied bob's version 9.
		wm := l.Prefix() + ":{" + strconv.Itoa(l.Partition("bob")) + "}:" + ledger.DefaultProjectorName + ":dedup:wm"
		require.NoError(t, rdb.HSet(ctx, wm, "bob", 9).Err())
		rep := mustVerify(t, l, ledger.VerifyOptions{})
		require.Equal(t, []string{ledger.ProblemLostEvents, ledger.ProblemLostEvents}, kinds(rep.Problems), "%v", rep.Problems)
		assert.Equal(t, "alice", rep.Problems[0].Account)
		assert.Contains(t, rep.Problems[0].Detail, "has version 3, the account only 2")
		assert.Contains(t, rep.Problems[0].Detail, "outbox entry")
		assert.Equal(t, "bob", rep.Problems[1].Account)
		assert.Contains(t, rep.Problems[1].Detail, `consumer "projector" has version 9, the account only 2`)

		rep = mustVerify(t, l, ledger.VerifyOptions{Consumers: []string{}, OutboxSample: -1})
		assert.True(t, rep.OK(), "without the cross-checks the loss is invisible: %v", rep.Problems)
	})

	t.Run("totals above int64 are exact and marshal as strings", func(t *testing.T) {
		l := fresh(t)
		want := new(big.Int)
		for i := range 3 {
			id := fmt.Sprintf("rich%d", i)
			fund(t, l, id, math.MaxInt64)
			want.Add(want, big.NewInt(math.MaxInt64))
		}
		rep := mustVerify(t, l, noOutbox)
		require.True(t, rep.OK(), "%v", rep.Problems)
		require.Zero(t, rep.Totals.Get("USD").Cmp(want), "%s", rep.Totals.Get("USD"))
		raw, err := json.Marshal(rep)
		require.NoError(t, err)
		assert.Contains(t, string(raw), `"totals":{"USD":"27670116110564327421"}`)
		var back ledger.VerifyReport
		require.NoError(t, json.Unmarshal(raw, &back))
		assert.Zero(t, back.Totals.Get("USD").Cmp(want))
	})
}

// TestVerifyUnderConcurrentWrites runs Verify again and again while writers deposit,
// withdraw, transfer (within and across partitions), place, capture (also to another
// account) and void holds, and a relay feeds the projector: no run may report a problem.
// It fails without closeCut (a transfer credited after its source was read).
func TestVerifyUnderConcurrentWrites(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	ctx := context.Background()
	l := MustOpen(t, rdb, ledger.Config{})
	accounts := make([]string, 8)
	for i := range accounts {
		accounts[i] = fmt.Sprintf("acct%d", i)
		fund(t, l, accounts[i], 1_000_000)
	}
	pr, err := ledger.NewProjector(rdb, ledger.ProjectorConfig{})
	require.NoError(t, err)
	locker, err := lock.New([]redis.UniversalClient{rdb}, lock.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { locker.Close() })
	relay, err := outbox.NewRelay(rdb, locker, outbox.Config{Owner: "r1", Sinks: []outbox.Sink{pr, l.TransferManager()},
		PollInterval: 5 * time.Millisecond, BlockTimeout: 100 * time.Millisecond, LeaseRetry: 100 * time.Millisecond})
	require.NoError(t, err)
	rctx, stopRelay := context.WithCancel(ctx)
	relayDone := make(chan error, 1)
	go func() { relayDone <- relay.Run(rctx) }()
	defer func() { stopRelay(); require.NoError(t, <-relayDone) }()

	const writers, ops = 6, 150
	var wg sync.WaitGroup
	var writing atomic.Int32
	writing.Store(writers)
	for w := range writers {
		wg.Go(func() {
			defer writing.Add(-1)
			rnd := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range ops {
				a := accounts[rnd.IntN(len(accounts))]
				b := accounts[rnd.IntN(len(accounts))]
				amount := int64(1 + rnd.IntN(100))
				var err error
				switch i % 5 {
				case 0:
					_, err = l.Deposit(ctx, ledger.Deposit{Account: a, Currency: "USD", Amount: amount}, ledger.WriteOptions{})
				case 1:
					_, err = l.Withdraw(ctx, ledger.Withdraw{Account: a, Currency: "USD", Amount: amount}, ledger.WriteOptions{})
				case 2, 3:
					if a != b {
						_, err = l.CreateTransfer(ctx, ledger.TransferRequest{ID: fmt.Sprintf("t-%d-%d", w, i), From: a, To: b, Currency: "USD", Amount: amount})
					}
				case 4:
					h := fmt.Sprintf("h-%d-%d", w, i)
					if _, err = l.PlaceHold(ctx, ledger.PlaceHold{Account: a, ID: h, Currency: "USD", Amount: amount, Timeout: time.Hour}); err != nil {
						break
					}
					switch {
					case rnd.IntN(3) == 0:
						_, err = l.VoidHold(ctx, a, h, ledger.WriteOptions{})
					case a != b:
						_, err = l.CaptureHold(ctx, a, h, 0, b, ledger.WriteOptions{})
					default:
						_, err = l.CaptureHold(ctx, a, h, amount/2+1, "", ledger.WriteOptions{})
					}
				}
				if err != nil && !errors.Is(err, ledger.ErrInsufficientFunds) {
					t.Errorf("writer %d op %d: %v", w, i, err)
					return
				}
			}
		})
	}
	runs := 0
	for writing.Load() > 0 || runs < 3 {
		rep, err := l.VerifyWith(ctx, ledger.VerifyOptions{})
		require.NoError(t, err)
		require.True(t, rep.OK(), "run %d while writes flow: %v", runs, rep.Problems)
		runs++
	}
	wg.Wait()
	t.Logf("%d verify runs while writing", runs)
	require.Eventually(t, func() bool {
		rep, err := l.Verify(ctx)
		return err == nil && rep.OK() && rep.Pending == 0
	}, 30*time.Second, 20*time.Millisecond, "quiescent: clean and nothing in flight")
}

// makeTransfers makes one finished transfer of every kind on l and returns them by kind:
// within a partition, across partitions, refunded because the destination closed between
// debit and credit, and hold captures to another account within and across partitions.
// It also leaves a refusal recorded under a transfer ID (no "id" field: not a transfer).
func makeTransfers(t *testing.T, rdb redis.UniversalClient, l *ledger.Ledger) map[string]ledger.Transfer {
	t.Helper()
	ctx := context.Background()
	out := map[string]ledger.Transfer{}
	get := func(kind, id string) {
		tr, err := l.GetTransfer(ctx, id)
		require.NoError(t, err)
		out[kind] = tr
	}

	fund(t, l, "shop..alice", 1000)
	fund(t, l, "shop..bob", 0)
	_, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-same", From: "shop..alice", To: "shop..bob", Currency: "USD", Amount: 100})
	require.NoError(t, err)
	get("same", "t-same")

	from, to := apart(l, "x-")
	fund(t, l, from, 1000)
	fund(t, l, to, 0)
	_, err = l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-cross", From: from, To: to, Currency: "USD", Amount: 200})
	require.NoError(t, err)
	get("cross", "t-cross")

	rfrom, rto := apart(l, "r-")
	fund(t, l, rfrom, 1000)
	fund(t, l, rto, 0)
	req := ledger.TransferRequest{ID: "t-refund", From: rfrom, To: rto, Currency: "USD", Amount: 300}
	require.NoError(t, l.StartTransfer(ctx, req))
	_, err = l.CloseAccount(ctx, rto, ledger.WriteOptions{})
	require.NoError(t, err)
	_, err = l.CreateTransfer(ctx, req) // the retry drives it on: the credit is refused
	require.NoError(t, err)
	get("refunded", "t-refund")

	for kind, accts := range map[string][2]string{"capture same": {"hs..buyer", "hs..seller"}, "capture cross": {from, to}} {
		if kind == "capture same" {
			fund(t, l, accts[0], 1000)
			fund(t, l, accts[1], 0)
		}
		_, err = l.PlaceHold(ctx, ledger.PlaceHold{Account: accts[0], ID: "auth", Currency: "USD", Amount: 50, Timeout: time.Hour})
		require.NoError(t, err)
		rc, err := l.CaptureHold(ctx, accts[0], "auth", 40, accts[1], ledger.WriteOptions{})
		require.NoError(t, err)
		get(kind, decodeHold(t, rc).TransferID)
	}

	_, err = l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-refused", From: "shop..bob", To: "shop..alice", Currency: "USD", Amount: 1_000_000})
	require.ErrorIs(t, err, ledger.ErrInsufficientFunds)
	refusal, err := rdb.HGetAll(ctx, transferKey(l, "shop..bob", "t-refused")).Result()
	require.NoError(t, err)
	require.Equal(t, "1", refusal["refused"], "a refusal is recorded under the transfer's key: %v", refusal)

	for kind, tr := range out {
		want := ledger.TransferCompleted
		if kind == "refunded" {
			want = ledger.TransferRefunded
		}
		require.Equal(t, want, tr.Status, kind)
	}
	require.Equal(t, "destination account closed", out["refunded"].Reason)
	require.Equal(t, "auth", out["capture cross"].HoldID)
	require.NotEqual(t, l.Partition(out["capture cross"].From), l.Partition(out["capture cross"].To))
	require.Equal(t, l.Partition(out["capture same"].From), l.Partition(out["capture same"].To))
	return out
}

// transferKey is the key of a transfer's record, in its source account's partition.
func transferKey(l *ledger.Ledger, from, id string) string {
	return l.Prefix() + ":{" + strconv.Itoa(l.Partition(from)) + "}:transfer:" + id
}

// TestVerifyTransferRecords checks that Verify compares every transfer's record (what GET
// /v1/transfers/{id} answers) with its steps: a ledger with transfers of every kind is
// clean, and each way of corrupting a finished transfer's record is reported as exactly
// one transfer_record violation naming the transfer.
func TestVerifyTransferRecords(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	ctx := context.Background()
	l := MustOpen(t, rdb, ledger.Config{})
	trs := makeTransfers(t, rdb, l)
	noOutbox := ledger.VerifyOptions{Consumers: []string{}}

	clean := func(t *testing.T, opts ledger.VerifyOptions) {
		t.Helper()
		rep := mustVerify(t, l, opts)
		require.True(t, rep.OK(), "%v", rep.Problems)
		assert.Empty(t, rep.Warnings)
		assert.Equal(t, len(trs), rep.Transfers, "the refusal is not a transfer")
		assert.Zero(t, rep.Pending)
	}
	t.Run("transfers of every kind verify", func(t *testing.T) {
		clean(t, ledger.VerifyOptions{})
		clean(t, ledger.VerifyOptions{StuckAfter: time.Nanosecond})
	})

	// corrupt applies edit to the record of trs[kind] (and its partition's pending index),
	// requires Verify with opts to report exactly one transfer_record violation about it
	// with a detail containing want (none when want is empty), then puts record and index
	// back.
	corrupt := func(t *testing.T, kind string, opts ledger.VerifyOptions, want string, edit func(rec, index string)) {
		t.Helper()
		tr := trs[kind]
		rec, index := transferKey(l, tr.From, tr.ID), l.TransfersPendingKey(tr.From)
		saved, err := rdb.HGetAll(ctx, rec).Result()
		require.NoError(t, err)
		defer func() {
			require.NoError(t, rdb.Del(ctx, rec).Err())
			require.NoError(t, rdb.HSet(ctx, rec, saved).Err())
			require.NoError(t, rdb.ZRem(ctx, index, tr.ID).Err())
			clean(t, noOutbox)
		}()
		edit(rec, index)
		rep := mustVerify(t, l, opts)
		if want == "" {
			require.True(t, rep.OK(), "%v", rep.Problems)
			assert.Empty(t, rep.Warnings)
			return
		}
		require.Equal(t, []string{ledger.ProblemTransferRecord}, kinds(rep.Problems), "%v", rep.Problems)
		p := rep.Problems[0]
		assert.Equal(t, tr.ID, p.Transfer)
		assert.Equal(t, tr.From, p.Account)
		require.NotNil(t, p.Partition)
		assert.Equal(t, l.Partition(tr.From), *p.Partition)
		assert.Contains(t, p.Detail, want)
	}
	set := func(fields ...any) func(rec, index string) {
		return func(rec, _ string) { require.NoError(t, rdb.HSet(ctx, rec, fields...).Err()) }
	}
	index := func(id string) func(rec, index string) {
		return func(_, index string) { require.NoError(t, rdb.ZAdd(ctx, index, redis.Z{Score: 1, Member: id}).Err()) }
	}

	t.Run("completed, but the source was refunded", func(t *testing.T) {
		corrupt(t, "refunded", noOutbox, "the steps say refunded, its record says completed", set("status", ledger.TransferCompleted))
	})
	t.Run("refunded, but the destination was credited", func(t *testing.T) {
		for _, kind := range []string{"same", "cross", "capture same", "capture cross"} {
			t.Run(kind, func(t *testing.T) {
				corrupt(t, kind, noOutbox, "the steps say completed, its record says refunded", set("status", ledger.TransferRefunded, "reason", "destination account closed"))
			})
		}
	})
	t.Run("pending although credited", func(t *testing.T) {
		tr := trs["cross"]
		pending := func(rec, idx string) {
			set("status", ledger.TransferPending)(rec, idx)
			require.NoError(t, rdb.HDel(ctx, rec, "completed_at").Err())
		}
		indexedPending := func(rec, idx string) {
			pending(rec, idx)
			require.NoError(t, rdb.ZAdd(ctx, idx, redis.Z{Score: float64(tr.CreatedAt.UnixMilli()), Member: tr.ID}).Err())
		}
		// As Redis Cluster leaves it between the credit and the step that completes the
		// record: not reported until StuckAfter has passed since the credit.
		corrupt(t, "cross", noOutbox, "", indexedPending)
		corrupt(t, "cross", ledger.VerifyOptions{Consumers: []string{}, StuckAfter: time.Nanosecond}, "but its record still says pending", indexedPending)
		// Outside the pending index nothing would ever complete it: reported at once.
		corrupt(t, "cross", noOutbox, "its record says pending, outside the pending-transfers index", pending)
		corrupt(t, "same", noOutbox, "its record says pending, outside the pending-transfers index", pending)
	})
	t.Run("pending although refunded", func(t *testing.T) {
		corrupt(t, "refunded", noOutbox, "the steps say refunded, its record says pending", func(rec, idx string) {
			set("status", ledger.TransferPending)(rec, idx)
			index(trs["refunded"].ID)(rec, idx)
		})
		// Outside the index: one violation, not a second for the status.
		corrupt(t, "refunded", noOutbox, "refunded, but its record says pending, outside the pending-transfers index", set("status", ledger.TransferPending))
	})
	t.Run("finished, but still in the pending index", func(t *testing.T) {
		for _, kind := range []string{"same", "cross", "refunded", "capture same", "capture cross"} {
			t.Run(kind, func(t *testing.T) {
				corrupt(t, kind, noOutbox, "still in the pending-transfers index", index(trs[kind].ID))
			})
		}
	})
	t.Run("amount, currency, accounts or hold disagree", func(t *testing.T) {
		tr := trs["capture cross"]
		for _, f := range []struct{ field, value, want string }{
			{"amount", "999", fmt.Sprintf("the steps say %s→%s 40 USD (hold \"auth\"), the record %s→%s 999 USD (hold \"auth\")", tr.From, tr.To, tr.From, tr.To)},
			{"currency", "EUR", "40 EUR"},
			{"from", "mallory", "the record mallory→" + tr.To},
			{"to", "mallory", "the record " + tr.From + "→mallory"},
			{"hold_id", "other", `(hold "other")`},
			{"id", "t-other", `its record names transfer "t-other"`},
		} {
			t.Run(f.field, func(t *testing.T) { corrupt(t, "capture cross", noOutbox, f.want, set(f.field, f.value)) })
		}
	})
	t.Run("record missing or unreadable", func(t *testing.T) {
		del := func(rec, _ string) { require.NoError(t, rdb.Del(ctx, rec).Err()) }
		corrupt(t, "cross", noOutbox, "completed, but its transfer record is missing", del)
		corrupt(t, "refunded", noOutbox, "refunded, but its transfer record is missing", del)
		// A refusal's fields under the ID are no transfer either.
		corrupt(t, "same", noOutbox, "completed, but its transfer record is missing", func(rec, idx string) {
			del(rec, idx)
			set("fp", "x", "body", `{"code":"insufficient_funds"}`, "refused", "1")(rec, idx)
		})
		corrupt(t, "cross", noOutbox, "has no completed_at", func(rec, _ string) { require.NoError(t, rdb.HDel(ctx, rec, "completed_at").Err()) })
		corrupt(t, "cross", noOutbox, `status "done", which no transfer has`, set("status", "done"))
		corrupt(t, "cross", noOutbox, "amount", set("amount", "lots"))
	})
}

// splitRead is a go-redis hook that, once, sends a pipeline that reads record apart: the
// commands up to that HGETALL, then between(), then the rest.
type splitRead struct {
	record  string
	between func()
	done    bool
}

func (h *splitRead) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *splitRead) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *splitRead) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for i, c := range cmds {
			if h.done || i+1 == len(cmds) || c.Name() != "hgetall" || c.Args()[1] != h.record {
				continue
			}
			h.done = true
			err := next(ctx, cmds[:i+1])
			h.between()
			if err2 := next(ctx, cmds[i+1:]); err == nil {
				err = err2
			}
			return err
		}
		return next(ctx, cmds)
	}
}

// TestVerifyTransferFinishingWhileRead finishes an in-flight transfer between Verify's read
// of its record (pending) and of its pending-index entry (gone by then): the record and the
// entry change together, so Verify must not take the pair for a pending record outside the
// index. It fails when Verify does not read such a record again.
func TestVerifyTransferFinishingWhileRead(t *testing.T) {
	srv := redistest.MustStart(t)
	ctx := context.Background()
	l := MustOpen(t, srv.Client(), ledger.Config{})
	from, to := apart(l, "m-")
	fund(t, l, from, 500)
	fund(t, l, to, 0)
	req := ledger.TransferRequest{ID: "t-mid", From: from, To: to, Currency: "USD", Amount: 200}
	require.NoError(t, l.StartTransfer(ctx, req))

	hook := &splitRead{record: transferKey(l, from, req.ID), between: func() {
		res, err := l.CreateTransfer(ctx, req) // the retry drives it to completion
		require.NoError(t, err)
		require.Equal(t, ledger.TransferCompleted, res.Transfer.Status)
	}}
	vc := srv.Client()
	vc.AddHook(hook)
	rep := mustVerify(t, MustOpen(t, vc, ledger.Config{}), ledger.VerifyOptions{Consumers: []string{}})
	require.True(t, hook.done, "the record was read apart from its index entry")
	require.True(t, rep.OK(), "%v", rep.Problems)
	assert.Empty(t, rep.Warnings)
	assert.Equal(t, 1, rep.Pending, "in flight in the cut, which was read before the credit")
	assert.Zero(t, rep.InFlight.Get("USD").Cmp(big.NewInt(200)))
}
