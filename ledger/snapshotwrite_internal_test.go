package ledger

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// The commit script hands a snapshot's fields to HSET and HDEL a thousand at a time: Lua's
// unpack cannot pass more than ~8,000 values to one call, and an account's pending holds
// are a field each. One commit writes an account with 10,000 holds in full (20,000
// values), the next deletes them all.
func TestCommitWritesSnapshotsOfAnySize(t *testing.T) {
	const holds = 10_000
	ctx := context.Background()
	for _, b := range redistest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			l, err := Open(ctx, rdb, Config{Prefix: "bigsnap"})
			require.NoError(t, err)
			_, err = l.OpenAccount(ctx, OpenAccount{ID: "big"}, WriteOptions{})
			require.NoError(t, err)
			p := l.store.keys.partition("big")
			now := time.Now()

			// commit writes after over the account's current snapshot, with one event.
			commit := func(change func(a *Account)) {
				t.Helper()
				snaps, _, err := l.store.read(ctx, []string{"big"}, nil, now)
				require.NoError(t, err)
				before := snaps["big"]
				after := before.acc.clone()
				change(after)
				after.Version++
				after.last = now.UnixNano()
				e := Event{ID: EventID("big", after.Version), Type: EventHoldPlaced, Account: "big", Version: after.Version, Time: now, Data: []byte("{}")}
				out, err := l.store.write(ctx, plan{partition: p, accounts: []accountWrite{{before: before, after: after, events: []Event{e}}}}, [2]int64{60_000, 60_000})
				require.NoError(t, err)
				require.Empty(t, out.skipped)
			}
			holdFields := func() int {
				n, err := l.HoldFields(ctx, "big")
				require.NoError(t, err)
				return n
			}

			commit(func(a *Account) {
				m := map[string]pendingHold{}
				for i := range holds {
					m[fmt.Sprintf("h%05d", i)] = pendingHold{Currency: "USD", Amount: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
				}
				a.holds = newHoldSet(m)
			})
			require.Equal(t, holds, holdFields())
			acc, err := l.Account(ctx, "big")
			require.NoError(t, err)
			assert.Equal(t, int64(holds), acc.Balances["USD"].Held, "every hold read back")

			commit(func(a *Account) { a.holds = holdSet{} })
			assert.Zero(t, holdFields(), "one commit deleted every hold's field")
		})
	}
}
