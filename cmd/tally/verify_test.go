package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// TestVerifyCommand: `tally verify` prints a summary by default and the JSON report with
// --json, with totals above int64 as exact decimal strings; it exits with an error naming
// the number of violations when an invariant is broken, and the summary names the account.
func TestVerifyCommand(t *testing.T) {
	ctx := context.Background()
	srv := redistest.MustStart(t)
	rdb := srv.Client()
	l, err := ledger.Open(ctx, rdb, ledger.Config{})
	require.NoError(t, err)
	for i := range 3 {
		id := fmt.Sprintf("rich%d", i)
		_, err := l.OpenAccount(ctx, ledger.OpenAccount{ID: id}, ledger.WriteOptions{})
		require.NoError(t, err)
		_, err = l.Deposit(ctx, ledger.Deposit{Account: id, Currency: "USD", Amount: math.MaxInt64}, ledger.WriteOptions{})
		require.NoError(t, err)
	}
	const total = "27670116110564327421" // 3 × (2^63 − 1)

	var out bytes.Buffer
	require.NoError(t, run(ctx, []string{"verify", "--redis", srv.Addr(), "--json"}, &out, &out))
	var rep struct {
		Accounts int               `json:"accounts"`
		Totals   map[string]string `json:"totals"`
		Problems []ledger.Problem  `json:"problems"`
	}
	require.NoError(t, json.Unmarshal(out.Bytes(), &rep), out.String())
	assert.Equal(t, 3, rep.Accounts)
	assert.Equal(t, total, rep.Totals["USD"], "a decimal string, exact")
	assert.Empty(t, rep.Problems)

	out.Reset()
	require.NoError(t, run(ctx, []string{"verify", "--redis", srv.Addr()}, &out, &out))
	assert.Contains(t, out.String(), "accounts 3, events 6, transfers 0 (0 in flight)")
	assert.Regexp(t, `USD\s+`+total+`\s+0\s+0\s+`+total, out.String())
	assert.Contains(t, out.String(), "OK: no invariant violated")

	require.NoError(t, rdb.HSet(ctx, fmt.Sprintf("tally:{%d}:acct:rich1", l.Partition("rich1")), "b:USD", 1).Err())
	out.Reset()
	err = run(ctx, []string{"verify", "--redis", srv.Addr()}, &out, &out)
	require.EqualError(t, err, "verify: 2 invariant violations")
	assert.Contains(t, out.String(), fmt.Sprintf("replay_mismatch account rich1 (partition %d): snapshot (version 2) differs", l.Partition("rich1")))
	assert.Contains(t, out.String(), "not_conserved currency USD")
	assert.Contains(t, out.String(), "FAILED: 2 invariant violations")
}

// TestVerifyConsumersFlag: --consumers names the dedup consumers whose watermarks are
// checked (the built-in projector by default); an empty --consumers checks none.
func TestVerifyConsumersFlag(t *testing.T) {
	ctx := context.Background()
	srv := redistest.MustStart(t)
	l, err := ledger.Open(ctx, srv.Client(), ledger.Config{})
	require.NoError(t, err)
	_, err = l.OpenAccount(ctx, ledger.OpenAccount{ID: "alice"}, ledger.WriteOptions{})
	require.NoError(t, err)
	// A projector that saw version 9 of an account at version 1: events were lost.
	d, err := outbox.NewDedup(srv.Client(), outbox.DedupConfig{Prefix: "tally", Name: ledger.DefaultProjectorName})
	require.NoError(t, err)
	require.NoError(t, srv.Client().HSet(ctx, d.Key(l.Partition("alice"), "dedup:wm"), "alice", 9).Err())

	for _, tc := range []struct {
		args []string
		lost bool
	}{
		{nil, true},
		{[]string{"--consumers", ledger.DefaultProjectorName + ",other"}, true},
		{[]string{"--consumers", "other"}, false},
		{[]string{"--consumers", ""}, false},
	} {
		var out bytes.Buffer
		err := run(ctx, append([]string{"verify", "--redis", srv.Addr()}, tc.args...), &out, &out)
		if tc.lost {
			require.Error(t, err, "%v", tc.args)
			assert.Contains(t, out.String(), "lost_events account alice", "%v", tc.args)
		} else {
			require.NoError(t, err, "%v: %s", tc.args, out.String())
		}
	}
}
