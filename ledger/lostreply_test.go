package ledger_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/faultproxy"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/internal/redisx"
	"github.com/tally-ledger/tally/internal/workload"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
)

// splitTarget writes through one ledger and reads (and opens accounts) through another on
// the same keys: the workload's checks must not meet the faults its writes do.
type splitTarget struct {
	libraryTarget
	write *ledger.Ledger
}

func (t splitTarget) Do(ctx context.Context, op workload.Op) workload.Result {
	return libraryTarget{t.write}.Do(ctx, op)
}

// TestLostCommitReplies loses the reply of every third commit on its way back: the script
// ran in Redis, but the ledger sees its connection fail (faultproxy.LoseNextReply, armed
// just before the commit is sent). Meanwhile the exactly-once workload races keyless
// writes, bursts of duplicates sharing an Idempotency-Key and cancellations, in both modes,
// with group commit on and off. The ledger must settle every lost reply from the request's
// record — the client's key, or the internal operation token a keyless write carries — and
// apply nothing twice: the workload traces every event to the one operation it came from.
// Without the token's read and check on a retry, keyless writes apply twice in every
// subtest ("deposit 147 (key "") applied twice").
func TestLostCommitReplies(t *testing.T) {
	srv := redistest.MustStart(t)
	masters := redistest.MustStartN(t, 3)
	p, err := faultproxy.New(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	for _, mode := range []ledger.Mode{ledger.ModeOptimistic, ledger.ModeLock} {
		for _, group := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/group-commit=%v", mode, group), func(t *testing.T) {
				proxied := redis.NewClient(&redis.Options{Addr: p.Addr(), MaxRetries: -1}) // the ledger retries, not go-redis
				t.Cleanup(func() { proxied.Close() })
				prefix := fmt.Sprintf("lost%d", time.Now().UnixNano())
				cfg := ledger.Config{Prefix: prefix, Mode: mode, DisableGroupCommit: !group, MaxRetries: 200}
				if mode == ledger.ModeLock {
					cfg.Locker = mustLocker(t, masters, lock.Config{TTL: 5 * time.Second, WaitTimeout: 20 * time.Second})
				}
				l := MustOpen(t, proxied, cfg)
				direct := MustOpen(t, srv.Client(), ledger.Config{Prefix: prefix})

				var commits atomic.Int64
				l.SetBeforeCommit(func() {
					if commits.Add(1)%3 == 0 {
						p.LoseNextReply()
					}
				})
				lost := p.Lost()
				seed := uint64(time.Now().UnixNano())
				t.Logf("seed %d", seed)
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				rep, err := workload.Run(ctx, splitTarget{libraryTarget: libraryTarget{direct}, write: l}, exactlyOnceConfig(seed, ""))
				l.SetBeforeCommit(nil)
				p.Heal()
				lost = p.Lost() - lost
				t.Logf("%d replies lost; %d requests: %d applied, %d rejected, %d unknown; %v; stats %+v",
					lost, rep.Requests, rep.Applied, rep.Rejected, rep.Unknown, rep.Codes, l.Stats())
				require.NoError(t, err)
				require.Positive(t, lost, "the fault was injected")
				require.Positive(t, rep.Applied)
				require.Positive(t, l.Stats().Retries, "a lost reply is an error the ledger retries")
			})
		}
	}
}

// TestOperationTokensShareOneHash checks where keyless writes keep their operation tokens:
// as fields of one hash per partition and tenth of a second, which expires
// OperationTokenTTL after its last write — not as a key per write, and never kept for good —
// each holding only the number of its request's commit.
// The clock stands still, so every token of the account's partition lands in one hash; a
// held commit gathers the deposits queued behind it into one batch.
func TestOperationTokensShareOneHash(t *testing.T) {
	ctx := context.Background()
	const n = 20
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			at := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
			l := MustOpen(t, rdb, ledger.Config{Prefix: "tok", OperationTokenTTL: time.Minute, Clock: func() time.Time { return at }})
			fund(t, l, "a", 0)
			entered, release := holdCommit(t, l, 1)
			var wg sync.WaitGroup
			wg.Go(func() {
				_, err := l.Deposit(ctx, ledger.Deposit{Account: "a", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
				assert.NoError(t, err)
			})
			<-entered
			for range n {
				wg.Go(func() {
					_, err := l.Deposit(ctx, ledger.Deposit{Account: "a", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
					assert.NoError(t, err)
				})
			}
			require.Eventually(t, func() bool { return l.Waiting("a") >= n }, 10*time.Second, time.Millisecond, "the deposits wait behind the held commit")
			release()
			wg.Wait()
			require.Equal(t, int64(n+1), posted(t, l, "a"))

			var mu sync.Mutex
			fields := map[string]map[string]string{}
			ttls := map[string]time.Duration{}
			require.NoError(t, redisx.ForEachMaster(ctx, rdb, func(ctx context.Context, c *redis.Client) error {
				keys, err := c.Keys(ctx, "tok:*:ops:*").Result()
				if err != nil {
					return err
				}
				for _, k := range keys {
					f, err := c.HGetAll(ctx, k).Result()
					if err != nil {
						return err
					}
					ttl, err := c.PTTL(ctx, k).Result()
					if err != nil {
						return err
					}
					mu.Lock()
					fields[k], ttls[k] = f, ttl
					mu.Unlock()
				}
				return nil
			}))
			require.Len(t, fields, 1, "one hash for the partition's tenth of a second: %v", fields)
			for k, f := range fields {
				assert.GreaterOrEqual(t, len(f), n+1, "%s: a field per keyless deposit", k)
				for token, v := range f {
					// Each commit was the deposit's first: the token holds its number, not
					// a copy of the response (which only the request itself ever reads).
					assert.Equal(t, "0", v, "%s %s", k, token)
				}
				assert.Positive(t, ttls[k], "%s expires", k)
				assert.LessOrEqual(t, ttls[k], time.Minute, "%s: OperationTokenTTL after its last write", k)
			}
		})
	}
}
