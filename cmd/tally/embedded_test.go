package main

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/client"
)

// TestServeEmbeddedExpiresKeys: the embedded Redis of `tally serve` expires keys as a real
// one does (miniredis alone never does): an Idempotency-Key is remembered for
// --idempotency-ttl and then forgotten, so reusing it for another deposit is refused at
// first and applied once the record has expired.
func TestServeEmbeddedExpiresKeys(t *testing.T) {
	ctx := context.Background()
	base, stop := startServe(t, "--idempotency-ttl", "2s", "--relay=false")
	c, err := client.New(base)
	require.NoError(t, err)
	_, err = c.OpenAccount(ctx, client.OpenAccountRequest{ID: "alice"})
	require.NoError(t, err)
	deposit := func(amount int64) error {
		_, err := c.Deposit(ctx, "alice", "USD", amount, client.WithIdempotencyKey("k1"))
		return err
	}
	require.NoError(t, deposit(10))
	require.ErrorIs(t, deposit(20), client.ErrIdempotencyKeyReused, "the key is remembered")
	require.Eventually(t, func() bool { return deposit(20) == nil },
		20*time.Second, 100*time.Millisecond, "the idempotency record expires after --idempotency-ttl")

	acct, err := c.Account(ctx, "alice")
	require.NoError(t, err)
	require.Equal(t, int64(30), acct.Balances["USD"].Posted, "both deposits applied, each once")
	require.NoError(t, stop())
}
