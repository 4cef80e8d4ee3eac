package ledger

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestParseSnapshotHolds reads back the hold fields snapshotFields writes, and refuses a
// hold field that is not what it writes as a corrupt snapshot (an internal error, never a
// guess at the hold).
func TestParseSnapshotHolds(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	acc := &Account{ID: "a", Version: 4, Status: StatusOpen, Balances: map[string]Balance{"USD": {Posted: 50}, "EUR": {Posted: 7}},
		holds: newHoldSet(map[string]pendingHold{
			"h1": {Currency: "USD", Amount: 30, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)},
			"h2": {Currency: "EUR", Amount: 5, CreatedAt: t0.Add(-time.Hour), ExpiresAt: t0.Add(-time.Minute)}, // expired
		})}
	acc.settle(t0)
	fields, err := snapshotFields(acc)
	require.NoError(t, err)
	got, err := parseSnapshot("a", hashOf(fields), t0)
	require.NoError(t, err)
	require.Empty(t, acc.diff(got))
	assert.Equal(t, Balance{Posted: 50, Held: 30, Available: 20}, got.Balances["USD"])
	assert.Equal(t, Balance{Posted: 7, Held: 0, Available: 7}, got.Balances["EUR"], "an expired hold counts for nothing")

	for _, bad := range []string{"", "USD", "USD 30 1764000000000", "USD 30 1764000000000 1764000000000 extra", "USD x 1 2", "USD 30 1.5 2", "USD 30 1 99999999999999999999"} {
		t.Run(bad, func(t *testing.T) {
			c := map[string]string{fieldVersion: "4", prefixHold + "h1": bad}
			_, err := parseSnapshot("a", c, t0)
			require.ErrorIs(t, err, ErrInternal)
			assert.Contains(t, err.Error(), "corrupt snapshot of a: "+prefixHold+"h1")
		})
	}
}
