package ledger_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
)

// A write on accounts this process committed last decides on the snapshots its commit left
// (Config.SnapshotCache): no read round trip, no HGETALL. With the cache off, each reads.
func TestSnapshotCacheSkipsTheRead(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			reads, counted := hashReads(t, b.Name, rdb)
			for _, tc := range []struct {
				name      string
				cache     int
				wantReads int
			}{
				{"on", 0, 0},
				{"off", -1, 2},
			} {
				t.Run(tc.name, func(t *testing.T) {
					l := MustOpen(t, rdb, ledger.Config{Prefix: "sc-" + tc.name, SnapshotCache: tc.cache})
					fund(t, l, "a", 100)
					before, hits := reads(), l.Stats().SnapshotHits
					_, err := l.Deposit(ctx, ledger.Deposit{Account: "a", Currency: "USD", Amount: 5}, ledger.WriteOptions{})
					require.NoError(t, err)
					_, err = l.Withdraw(ctx, ledger.Withdraw{Account: "a", Currency: "USD", Amount: 3}, ledger.WriteOptions{})
					require.NoError(t, err)
					if counted {
						assert.Equal(t, tc.wantReads, reads()-before, "hashes read")
					}
					if tc.cache == 0 {
						assert.Equal(t, int64(2), l.Stats().SnapshotHits-hits)
					} else {
						assert.Zero(t, l.Stats().SnapshotHits)
					}
					assert.Equal(t, int64(102), posted(t, l, "a"))
				})
			}
		})
	}
}

// Two processes write one account in turn, so each one's cached snapshot is out of date
// when it writes next. A refusal decided on a stale snapshot (here insufficient funds: the
// other process deposited since) has no version check of its own, so it must be decided
// again on a fresh read rather than answered; a success decided on one is caught by the
// version check. Either way the fresh read comes at once (no retry, no backoff) and the
// conflict is counted as a stale snapshot — in lock mode too, where it is no race between
// lease holders.
func TestStaleSnapshotIsReadAgain(t *testing.T) {
	ctx := context.Background()
	run := func(t *testing.T, a, b *ledger.Ledger) {
		fund(t, a, "s", 100) // a caches balance 100
		_, err := b.Deposit(ctx, ledger.Deposit{Account: "s", Currency: "USD", Amount: 50}, ledger.WriteOptions{})
		require.NoError(t, err) // 150; b caches it

		rc, err := a.Withdraw(ctx, ledger.Withdraw{Account: "s", Currency: "USD", Amount: 120}, ledger.WriteOptions{})
		require.NoError(t, err, "a refusal on a's stale snapshot (100 < 120) must not stand")
		assert.Equal(t, int64(30), decodeOp(t, rc).Account.Balances["USD"].Posted)

		rc, err = b.Withdraw(ctx, ledger.Withdraw{Account: "s", Currency: "USD", Amount: 10}, ledger.WriteOptions{})
		require.NoError(t, err)
		assert.Equal(t, int64(20), decodeOp(t, rc).Account.Balances["USD"].Posted, "decided on the fresh 30, not the cached 150")

		// b's version check failed on s: b no longer caches it (another process writes it)
		hits := b.Stats().SnapshotHits
		_, err = b.Deposit(ctx, ledger.Deposit{Account: "s", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
		require.NoError(t, err)
		_, err = b.Deposit(ctx, ledger.Deposit{Account: "s", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
		require.NoError(t, err)
		assert.Equal(t, hits, b.Stats().SnapshotHits, "an account another process writes is read, not cached")
		_, err = b.Withdraw(ctx, ledger.Withdraw{Account: "s", Currency: "USD", Amount: 2}, ledger.WriteOptions{})
		require.NoError(t, err)

		for name, l := range map[string]*ledger.Ledger{"a": a, "b": b} {
			st := l.Stats()
			assert.Equal(t, int64(1), st.StaleSnapshots, name)
			assert.Equal(t, int64(1), st.Conflicts, name)
			assert.Zero(t, st.Retries, name)
		}
		acc := requireConsistent(t, a, "s")
		assert.Equal(t, int64(20), acc.Balances["USD"].Posted)
		assert.Equal(t, int64(8), acc.Version, "open, deposit, deposit, two withdrawals, two deposits, a withdrawal")
	}
	for _, bk := range backends() {
		t.Run(bk.Name, func(t *testing.T) {
			rdb := bk.Start(t)
			run(t, MustOpen(t, rdb, ledger.Config{Prefix: "stale"}), MustOpen(t, rdb, ledger.Config{Prefix: "stale"}))
		})
	}
	t.Run("lock mode", func(t *testing.T) {
		rdb := redistest.MustStart(t).Client()
		masters := redistest.MustStartN(t, 3)
		open := func() *ledger.Ledger {
			return MustOpen(t, rdb, ledger.Config{Prefix: "stale", Mode: ledger.ModeLock,
				Locker: mustLocker(t, masters, lock.Config{TTL: 2 * time.Second, WaitTimeout: 5 * time.Second})})
		}
		run(t, open(), open())
	})
}

func TestSnapshotCacheValidated(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	_, err := ledger.Open(context.Background(), rdb, ledger.Config{SnapshotCache: -2})
	require.ErrorContains(t, err, "snapshot cache")
}

// A failover that loses writes can bring an account back to a version this process cached
// from another history: its own commit was lost, another process wrote the same version
// since. The version check alone would let a decision on the cached snapshot commit on top
// of that other history (a snapshot its stream does not replay to); the last event's time
// checked with it makes that a conflict, decided again on a fresh read.
func TestCachedSnapshotOfALostHistory(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.MustStart(t).Client()
	a := MustOpen(t, rdb, ledger.Config{Prefix: "lost"})
	b := MustOpen(t, rdb, ledger.Config{Prefix: "lost"})
	fund(t, a, "f", 100)

	// The failover: everything as it is now, restored after a's next write.
	keys, err := rdb.Keys(ctx, "lost*").Result()
	require.NoError(t, err)
	dumps := map[string]string{}
	for _, k := range keys {
		dumps[k] = rdb.Dump(ctx, k).Val()
	}
	_, err = a.Deposit(ctx, ledger.Deposit{Account: "f", Currency: "USD", Amount: 10}, ledger.WriteOptions{})
	require.NoError(t, err) // version 3 in a's cache, balance 110: lost below
	now, err := rdb.Keys(ctx, "lost*").Result()
	require.NoError(t, err)
	for _, k := range now {
		if d, ok := dumps[k]; ok {
			require.NoError(t, rdb.RestoreReplace(ctx, k, 0, d).Err())
		} else {
			require.NoError(t, rdb.Del(ctx, k).Err())
		}
	}

	_, err = b.Deposit(ctx, ledger.Deposit{Account: "f", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
	require.NoError(t, err) // version 3 again, balance 101

	rc, err := a.Deposit(ctx, ledger.Deposit{Account: "f", Currency: "USD", Amount: 5}, ledger.WriteOptions{})
	require.NoError(t, err)
	assert.Equal(t, int64(106), decodeOp(t, rc).Account.Balances["USD"].Posted, "decided on what Redis holds, not on the lost 110")
	assert.Equal(t, int64(1), a.Stats().StaleSnapshots)
	acc := requireConsistent(t, a, "f")
	assert.Equal(t, int64(4), acc.Version)
	assert.Equal(t, int64(106), acc.Balances["USD"].Posted)
}
