package ledger_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// commandCalls returns the calls of every command a Lua script can issue that the server
// counted since the last CONFIG RESETSTAT (INFO commandstats), without the script calls
// themselves and the test's own INFO/CONFIG.
func commandCalls(t *testing.T, rdb *redis.Client) map[string]int {
	t.Helper()
	out := redistest.CommandCalls(t, rdb)
	for name := range out {
		if name == "info" || name == "evalsha" || name == "eval" || strings.HasPrefix(name, "config") ||
			strings.HasPrefix(name, "script") {
			delete(out, name)
		}
	}
	return out
}

// TestProjectorRedisCalls counts the Redis commands the projector's script runs per message
// (INFO commandstats of a private server, so the count is exact): 20 accounts of one
// partition, each opened and then 9 deposits, delivered in version order across accounts in
// batches of 50 (4 batches), then everything again (all duplicates).
func TestProjectorRedisCalls(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.MustStart(t).Client()
	pr, err := ledger.NewProjector(rdb, ledger.ProjectorConfig{Partitions: 1})
	require.NoError(t, err)
	const accounts, perAccount, batch = 20, 10, 50
	var msgs []outbox.Message
	for v := int64(1); v <= perAccount; v++ {
		for a := 0; a < accounts; a++ {
			e := ledger.Event{Account: fmt.Sprintf("acct-%02d", a), Version: v, Type: ledger.EventDeposited,
				Time: time.Unix(0, 0).UTC(), Data: json.RawMessage(`{"currency":"USD","amount":5}`)}
			if v == 1 {
				e.Type, e.Data = ledger.EventAccountOpened, json.RawMessage(`{}`)
			}
			e.ID = ledger.EventID(e.Account, v)
			msgs = append(msgs, projectorMessage(0, e))
		}
	}
	deliver := func() map[string]int {
		require.NoError(t, rdb.ConfigResetStat(ctx).Err())
		for i := 0; i < len(msgs); i += batch {
			require.NoError(t, pr.Deliver(ctx, msgs[i:min(i+batch, len(msgs))]))
		}
		return commandCalls(t, rdb)
	}
	total := func(calls map[string]int) int {
		n := 0
		for _, c := range calls {
			n += c
		}
		return n
	}

	first := deliver()
	t.Logf("first delivery, %d messages: %d calls (%.2f per message) %v", len(msgs), total(first),
		float64(total(first))/float64(len(msgs)), first)
	require.Equal(t, int64(len(msgs)), pr.Dedup().Stats().Applied)
	const n, batches = accounts * perAccount, accounts * perAccount / batch
	// Per account and batch (every batch holds all 20 accounts, each with a deposit): the
	// dedup's watermark read (HGET), the effect's version read (HGET) and write with the sets
	// (HSET), and its events and posted counters (2 HINCRBY). Per batch: the totals' events
	// and posted counters (2 HINCRBY), and the dedup's watermarks (one HSET). Once: SADD per
	// account, and the totals' accounts counter. The projector's dedup is WatermarkOnly: no
	// message ID goes into the window.
	// (Before: 2,600 calls, 13.00 per message: a ZSCORE, INCR, ZADD, ZCARD, HGET and HSET of
	// the dedup and a SADD per message; then 1,296, with the effect's 6 commands per message
	// and a ZADD, an INCRBY and a window trim per batch; then 1,284 without the window.)
	require.Equal(t, map[string]int{
		"hget":    2 * batches * accounts,
		"hset":    batches * (accounts + 1),
		"hincrby": batches*(2*accounts+2) + 1,
		"sadd":    accounts,
	}, first)
	exists, err := rdb.Exists(ctx, pr.Dedup().Key(0, "dedup:ids")).Result()
	require.NoError(t, err)
	require.Zero(t, exists, "the window stays empty")

	again := deliver()
	t.Logf("redelivery, %d duplicates: %d calls (%.2f per message) %v", len(msgs), total(again),
		float64(total(again))/float64(len(msgs)), again)
	require.Equal(t, int64(len(msgs)), pr.Dedup().Stats().Duplicates)
	// Per duplicate the check for a recorded gap (ZSCORE of the account's gaps, which do not
	// exist), per key and batch the watermark read; nothing is written. (Before: a ZREVRANK
	// in the 100,000-ID window per duplicate.)
	require.Equal(t, map[string]int{"hget": batches * accounts, "zscore": n}, again)
}

// TestProjectorOutOfOrder: an account's events applied out of order (its opening arrives
// last, as a replayed dead letter does, filling a gap) project as in order: the account is
// listed once, from the first event applied, and the version stays the highest.
func TestProjectorOutOfOrder(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			rdb := b.Start(t)
			pr, err := ledger.NewProjector(rdb, ledger.ProjectorConfig{Partitions: 1})
			require.NoError(t, err)
			msg := func(v int64) outbox.Message {
				e := ledger.Event{ID: ledger.EventID("late", v), Account: "late", Version: v, Type: ledger.EventDeposited,
					Time: time.Unix(0, 0).UTC(), Data: json.RawMessage(`{"currency":"USD","amount":5}`)}
				if v == 1 {
					e.Type, e.Data = ledger.EventAccountOpened, json.RawMessage(`{"allow_negative":true}`)
				}
				return projectorMessage(0, e)
			}
			require.NoError(t, pr.Deliver(ctx, []outbox.Message{msg(3), msg(2)}))
			ids, err := pr.Accounts(ctx, 0)
			require.NoError(t, err)
			require.Equal(t, []string{"late"}, ids, "listed from its first event applied")
			require.NoError(t, pr.Deliver(ctx, []outbox.Message{msg(1), msg(3)}))
			require.Equal(t, outbox.DedupStats{Applied: 3, Duplicates: 1}, pr.Dedup().Stats())
			s, err := pr.Account(ctx, 0, "late")
			require.NoError(t, err)
			require.Equal(t, ledger.AccountSummary{Account: "late", Version: 3, Events: 3, AllowNegative: true,
				Posted: map[string]int64{"USD": 10}, Held: map[string]int64{}}, s)
			ids, err = pr.Accounts(ctx, 0)
			require.NoError(t, err)
			require.Equal(t, []string{"late"}, ids)
			tot, err := pr.Totals(ctx)
			require.NoError(t, err)
			require.Equal(t, ledger.Totals{Accounts: 1, Events: 3, Posted: map[string]int64{"USD": 10}, Held: map[string]int64{}}, tot)
		})
	}
}
