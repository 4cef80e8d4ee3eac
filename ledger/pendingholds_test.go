package ledger_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
)

// TestPendingHolds pages through an account's pending holds: ID order, pages that join
// up without gaps or repeats, resolved and expired holds left out, bad arguments refused.
func TestPendingHolds(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	ctx := context.Background()
	clock := newFakeClock()
	l := MustOpen(t, rdb, ledger.Config{Prefix: "ph", Clock: clock.Now})
	fund(t, l, "a", 1000)
	MustOpenAccount(t, l, "empty", false)

	// h00..h06; h01 is voided, h03 captured and h05 expires before the read.
	for i := range 7 {
		timeout := time.Hour
		if i == 5 {
			timeout = time.Minute
		}
		_, err := l.PlaceHold(ctx, ledger.PlaceHold{Account: "a", ID: fmt.Sprintf("h%02d", i), Currency: "USD", Amount: int64(10 + i), Timeout: timeout})
		require.NoError(t, err)
	}
	_, err := l.VoidHold(ctx, "a", "h01", ledger.WriteOptions{})
	require.NoError(t, err)
	_, err = l.CaptureHold(ctx, "a", "h03", 0, "", ledger.WriteOptions{})
	require.NoError(t, err)
	clock.Advance(2 * time.Minute)

	all, next, err := l.PendingHolds(ctx, "a", "", ledger.MaxHoldsPage)
	require.NoError(t, err)
	assert.Empty(t, next)
	var ids []string
	var held int64
	for _, h := range all {
		ids = append(ids, h.ID)
		held += h.Amount
		assert.Equal(t, ledger.HoldPending, h.Status)
		assert.Equal(t, "a", h.Account)
		assert.Equal(t, "USD", h.Currency)
		// The page shows a hold as GET .../holds/{hold} does.
		one, err := l.Hold(ctx, "a", h.ID)
		require.NoError(t, err)
		assert.Equal(t, one, h)
	}
	assert.Equal(t, []string{"h00", "h02", "h04", "h06"}, ids)
	acc, err := l.Account(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, acc.Balances["USD"].Held, held, "the holds listed are the ones the balance counts")

	// Pages of 3 then 1: next is the last hold of a full page, even when the only hold
	// after it has expired (h05 is skipped, not a page of its own).
	page, next, err := l.PendingHolds(ctx, "a", "", 3)
	require.NoError(t, err)
	assert.Equal(t, all[:3], page)
	assert.Equal(t, "h04", next)
	page, next, err = l.PendingHolds(ctx, "a", next, 3)
	require.NoError(t, err)
	assert.Equal(t, all[3:], page)
	assert.Empty(t, next)
	page, next, err = l.PendingHolds(ctx, "a", "h02", 2)
	require.NoError(t, err)
	assert.Equal(t, all[2:], page, "after need not be a pending hold")
	assert.Empty(t, next, "a full page with nothing after it is the last")
	page, _, err = l.PendingHolds(ctx, "a", "h01", 1)
	require.NoError(t, err)
	assert.Equal(t, all[1:2], page, "after a hold that is no longer pending")

	page, next, err = l.PendingHolds(ctx, "empty", "", 10)
	require.NoError(t, err)
	assert.Empty(t, page)
	assert.NotNil(t, page, "an empty page is [], not null")
	assert.Empty(t, next)

	_, _, err = l.PendingHolds(ctx, "nobody", "", 10)
	assert.ErrorIs(t, err, ledger.ErrAccountNotFound)
	for _, bad := range []struct {
		account, after string
		limit          int
	}{{"a", "", 0}, {"a", "", ledger.MaxHoldsPage + 1}, {"a", "bad id!", 10}, {"", "", 10}} {
		_, _, err = l.PendingHolds(ctx, bad.account, bad.after, bad.limit)
		assert.ErrorIs(t, err, ledger.ErrInvalid, "%+v", bad)
	}
}
