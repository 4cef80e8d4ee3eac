package ledger_test

import (
	"context"
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
	"github.com/tally-ledger/tally/outbox"
)

// scriptCalls returns how many EVAL and EVALSHA calls the server has run.
func scriptCalls(t *testing.T, rdb redis.UniversalClient) int64 {
	t.Helper()
	calls := redistest.CommandCalls(t, rdb)
	return int64(calls["eval"] + calls["evalsha"])
}

// hashReads returns a counter of the hashes (HGETALL) the servers of rdb read, and whether
// it counts: miniredis (the embedded backend) has no INFO commandstats, its counter stays 0.
func hashReads(t *testing.T, backend string, rdb redis.UniversalClient) (reads func() int, counted bool) {
	counted = backend != "embedded"
	return func() int {
		if !counted {
			return 0
		}
		return redistest.CommandCalls(t, rdb)["hgetall"]
	}, counted
}

// openApart opens a ledger with prefix on rdb and two accounts in different partitions,
// funded with the given USD amounts.
func openApart(t *testing.T, rdb redis.UniversalClient, prefix string, fromFunds, toFunds int64) (l *ledger.Ledger, from, to string) {
	t.Helper()
	l = MustOpen(t, rdb, ledger.Config{Prefix: prefix})
	from, to = apart(l, prefix+"-")
	fund(t, l, from, fromFunds)
	fund(t, l, to, toFunds)
	return l, from, to
}

// On a single Redis the credit's commit also completes the transfer (one script call fewer
// per cross-partition transfer); on Cluster, where the transfer record lives in another
// slot, the separate step does it. Either way the transfer ends completed, out of the
// pending index, with the completion time the request answered.
func TestCreditCompletesTransfer(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			l, from, to := openApart(t, rdb, "cc", 1000, 0)

			scripts := int64(-1)
			if b.Name == "standalone" {
				scripts = scriptCalls(t, rdb)
			}
			res, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-cc", From: from, To: to, Currency: "USD", Amount: 250})
			require.NoError(t, err)
			require.Equal(t, ledger.TransferCompleted, res.Transfer.Status)
			require.NotNil(t, res.Transfer.CompletedAt)
			if scripts >= 0 {
				// debit, credit-and-complete; no third call (the commit script is cached:
				// EVALSHA only).
				assert.Equal(t, int64(2), scriptCalls(t, rdb)-scripts, "script calls for one cross-partition transfer")
			}

			got, err := l.GetTransfer(ctx, "t-cc")
			require.NoError(t, err)
			assert.Equal(t, ledger.TransferCompleted, got.Status, "the record says completed")
			require.NotNil(t, got.CompletedAt)
			assert.True(t, got.CompletedAt.Equal(*res.Transfer.CompletedAt), "answered %v, recorded %v", res.Transfer.CompletedAt, got.CompletedAt)
			n, err := rdb.ZCard(ctx, l.TransfersPendingKey(from)).Result()
			require.NoError(t, err)
			assert.Zero(t, n, "out of the pending index")
			assert.Equal(t, int64(750), posted(t, l, from))
			assert.Equal(t, int64(250), posted(t, l, to))

			// Another driver afterwards (the process manager seeing the debit and the credit)
			// changes nothing and sees the same completion.
			pm := l.TransferManager()
			msg := debitedMessage(t, l, from, "t-cc")
			require.NoError(t, pm.Deliver(ctx, []outbox.Message{msg, msg}))
			again, err := l.GetTransfer(ctx, "t-cc")
			require.NoError(t, err)
			assert.Equal(t, got, again)
			assert.Equal(t, int64(250), posted(t, l, to), "credited once")
			requireVerified(t, l)
		})
	}
}

// On a single Redis a TransferCredited event means the transfer is complete (its credit's
// commit completed it), so the process manager reads nothing for it; on Cluster it reads
// the record, as the complete step may still be due.
func TestTransferManagerSkipsCompletedCredits(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			l, from, to := openApart(t, rdb, "sk", 100, 0)
			_, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-sk", From: from, To: to, Currency: "USD", Amount: 30})
			require.NoError(t, err)
			msg := transferMessage(t, l, ledger.EventTransferCredited, to, "t-sk")

			reads, _ := hashReads(t, b.Name, rdb)
			before := reads()
			require.NoError(t, l.TransferManager().Deliver(ctx, []outbox.Message{msg}))
			switch b.Name {
			case "standalone":
				assert.Equal(t, before, reads(), "records read for a credit that completed its transfer")
			case "cluster":
				assert.Greater(t, reads(), before, "the record is read: the complete step may be due")
			}
			got, err := l.GetTransfer(ctx, "t-sk")
			require.NoError(t, err)
			assert.Equal(t, ledger.TransferCompleted, got.Status)
			requireVerified(t, l)
		})
	}
}

// A credit driven by several drivers at once (the process manager, the sweep) commits once
// and completes the transfer once; each driver sees it completed with the same time.
func TestCreditCompletesOnceUnderConcurrentDrivers(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.MustStart(t).Client()
	l := MustOpen(t, rdb, ledger.Config{Prefix: "cc2"})
	for i := range 20 {
		from, to := apart(l, "cc2-"+strconv.Itoa(i)+"-")
		fund(t, l, from, 100)
		fund(t, l, to, 0)
		id := "t-cc2-" + strconv.Itoa(i)
		require.NoError(t, l.StartTransfer(ctx, ledger.TransferRequest{ID: id, From: from, To: to, Currency: "USD", Amount: 60}))
		msg := debitedMessage(t, l, from, id)
		pm := l.TransferManager()
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() { defer wg.Done(); assert.NoError(t, pm.Deliver(ctx, []outbox.Message{msg})) }()
		}
		wg.Wait()
		got, err := l.GetTransfer(ctx, id)
		require.NoError(t, err)
		require.Equal(t, ledger.TransferCompleted, got.Status)
		assert.Equal(t, int64(40), posted(t, l, from))
		assert.Equal(t, int64(60), posted(t, l, to), "credited once")
	}
	requireVerified(t, l)
}

// The process manager of the process whose request is still driving a transfer waits for
// that request instead of running the same steps beside it: no step is replayed. The
// request is a transfer, or a capture with a destination in another partition.
func TestTransferManagerWaitsForTheRequest(t *testing.T) {
	for _, c := range []struct {
		name string
		// setup prepares what the request needs; send makes the request; its event is the
		// one the transfer manager acts on.
		setup func(ctx context.Context, l *ledger.Ledger, from string) error
		send  func(ctx context.Context, l *ledger.Ledger, from, to string) error
		event string
	}{
		{"transfer", func(context.Context, *ledger.Ledger, string) error { return nil },
			func(ctx context.Context, l *ledger.Ledger, from, to string) error {
				_, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-tmw", From: from, To: to, Currency: "USD", Amount: 30})
				return err
			}, ledger.EventTransferDebited},
		{"capture", func(ctx context.Context, l *ledger.Ledger, from string) error {
			_, err := l.PlaceHold(ctx, ledger.PlaceHold{Account: from, ID: "h-tmw", Currency: "USD", Amount: 30, Timeout: time.Minute})
			return err
		}, func(ctx context.Context, l *ledger.Ledger, from, to string) error {
			_, err := l.CaptureHold(ctx, from, "h-tmw", 0, to, ledger.WriteOptions{})
			return err
		}, ledger.EventHoldCaptured},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			rdb := redistest.MustStart(t).Client()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "tmw"})
			from, to := apart(l, "tmw-")
			fund(t, l, from, 100)
			fund(t, l, to, 0)
			require.NoError(t, c.setup(ctx, l, from))

			// Hold the request in its second commit (the credit; the first debits).
			entered, release := holdCommit(t, l, 2)
			before := l.Stats()
			done := make(chan error, 1)
			go func() { done <- c.send(ctx, l, from, to) }()
			select {
			case <-entered:
			case <-time.After(10 * time.Second):
				t.Fatal("the request never reached its credit")
			}
			events, _, err := l.Events(ctx, from, 0, ledger.MaxEventsPage)
			require.NoError(t, err)
			last := events[len(events)-1]
			require.Equal(t, c.event, last.Type)
			delivered := make(chan error, 1)
			go func() {
				delivered <- l.TransferManager().Deliver(ctx, []outbox.Message{projectorMessage(l.Partition(from), last)})
			}()
			// The manager is either waiting for the request (right) or queued behind its
			// credit to run the credit again (wrong; it would replay it once released).
			require.Eventually(t, func() bool { return l.DrivingWaiters() == 1 || l.Waiting(to) == 1 }, 10*time.Second, time.Millisecond)
			release()
			require.NoError(t, <-done)
			require.NoError(t, <-delivered)
			assert.Zero(t, l.Stats().Replays-before.Replays, "the manager ran a step the request was running")
			assert.Equal(t, int64(30), posted(t, l, to))
			requireVerified(t, l)
		})
	}
}

// The credit of a transfer made by CreateTransfer decides on the destination the
// request's read found: one cross-partition transfer reads two hashes (the transfer's
// record and the destination; the source is in the snapshot cache its funding left), not
// four (the credit's read of the destination and of its record again).
func TestCreditDecidesOnPreparedDestination(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.MustStart(t).Client()
	l, from, to := openApart(t, rdb, "pd", 100, 0)

	before := redistest.CommandCalls(t, rdb)["hgetall"]
	res, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-pd", From: from, To: to, Currency: "USD", Amount: 40})
	require.NoError(t, err)
	require.Equal(t, ledger.TransferCompleted, res.Transfer.Status)
	assert.Equal(t, 2, redistest.CommandCalls(t, rdb)["hgetall"]-before, "hashes read for one cross-partition transfer")
	assert.Equal(t, int64(60), posted(t, l, from))
	assert.Equal(t, int64(40), posted(t, l, to))
	requireVerified(t, l)
}

// A credit that waits in its partition's queue behind other requests still decides on the
// destination its request read: the batch it joins reads only what the others need (here
// nothing: a keyless deposit whose account is in the snapshot cache), not the credit's
// destination or record. The deposit that
// leads the partition is held before its commit until the credit and a second deposit
// queue behind it, so the two form one batch.
func TestQueuedCreditDecidesOnPreparedDestination(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			l, from, to := openApart(t, rdb, "qc", 100, 0)
			y := to + ledger.PlacementSeparator + "y" // placed with to (to has no tag)
			fund(t, l, y, 0)
			reads, counted := hashReads(t, b.Name, rdb)

			var held atomic.Bool
			release := make(chan struct{})
			l.SetBeforeCommit(func() {
				if held.CompareAndSwap(false, true) {
					<-release // the first commit: the deposit that leads to's partition
				}
			})
			deposit := func(amount int64) {
				_, err := l.Deposit(ctx, ledger.Deposit{Account: y, Currency: "USD", Amount: amount}, ledger.WriteOptions{})
				assert.NoError(t, err)
			}
			var wg sync.WaitGroup
			wg.Go(func() { deposit(1) })
			require.Eventually(t, held.Load, 5*time.Second, time.Millisecond)
			before := reads()
			used, _ := l.Prereads()
			wg.Go(func() {
				res, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-qc", From: from, To: to, Currency: "USD", Amount: 40})
				if assert.NoError(t, err) {
					assert.Equal(t, ledger.TransferCompleted, res.Transfer.Status)
				}
			})
			require.Eventually(t, func() bool { return l.Waiting(to) == 1 }, 5*time.Second, time.Millisecond, "the credit queues")
			wg.Go(func() { deposit(2) })
			require.Eventually(t, func() bool { return l.Waiting(to) == 2 }, 5*time.Second, time.Millisecond, "the second deposit queues")
			close(release)
			wg.Wait()

			nowUsed, _ := l.Prereads()
			assert.Greater(t, nowUsed, used, "a batch decided on a snapshot its request brought")
			if counted {
				// the debit's read: destination, transfer record (the source is in the
				// snapshot cache its funding left); the batch of the credit and the second
				// deposit: nothing (the deposit's account is in the snapshot cache its first
				// deposit's commit left)
				assert.Equal(t, 2, reads()-before, "hashes read")
			}
			assert.Equal(t, int64(60), posted(t, l, from))
			assert.Equal(t, int64(40), posted(t, l, to))
			assert.Equal(t, int64(3), posted(t, l, y))
			requireVerified(t, l)
		})
	}
}

// A destination written after the request read it (here by another process, between the
// debit's commit and the credit's) fails the credit's version check; the credit is read
// and decided again, and the transfer completes with both writes applied once.
func TestCreditOnStaleDestinationRetries(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			l, from, to := openApart(t, rdb, "sd", 100, 5)
			other := MustOpen(t, rdb, ledger.Config{Prefix: "sd"}) // another process

			commits := 0
			l.SetBeforeCommit(func() {
				if commits++; commits == 2 { // the credit's first commit
					_, err := other.Deposit(ctx, ledger.Deposit{Account: to, Currency: "USD", Amount: 7}, ledger.WriteOptions{})
					assert.NoError(t, err)
				}
			})
			conflicts := l.Stats().Conflicts
			res, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-sd", From: from, To: to, Currency: "USD", Amount: 40})
			l.SetBeforeCommit(nil)
			require.NoError(t, err)
			require.Equal(t, ledger.TransferCompleted, res.Transfer.Status)
			assert.Greater(t, commits, 2, "the credit committed again after its conflict")
			assert.Greater(t, l.Stats().Conflicts, conflicts)
			assert.Equal(t, int64(60), posted(t, l, from))
			assert.Equal(t, int64(52), posted(t, l, to), "funding, the deposit and the credit, each once")
			requireVerified(t, l)
		})
	}
}
