package outbox

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// buggyEffect fails at run time on its third line.
var buggyEffect = NewEffect(`
local t = nil
return t.field`)

// An effect's Lua error names the line of the effect's body, not of the dedup script
// that wraps it, so that its author can find it.
func TestEffectErrorNamesItsLine(t *testing.T) {
	for _, b := range redistest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			d, err := NewDedup(rdb, DedupConfig{Name: "lines"})
			require.NoError(t, err)
			_, err = d.Apply(context.Background(), msgOf(2, "k", 1), buggyEffect, nil)
			require.Error(t, err)
			require.Contains(t, err.Error(), "effect line 3:")
		})
	}
}

// sumEffect adds ARGV[1] to KEYS[1] once per call: the bodies gather the sum in BATCH and
// the finish writes it and counts its own runs in KEYS[2]. A body refuses when ARGV[2] is
// "fail" (before it gathers); the finish fails on its third line when the sum is 13.
var sumEffect = NewBatchEffect(`
if ARGV[2] == 'fail' then return redis.error_reply('refused') end
BATCH.keys = KEYS
BATCH.sum = (BATCH.sum or 0) + tonumber(ARGV[1])`, `
if not BATCH.keys then return end
if BATCH.sum == 13 then local t = nil; return t.x end
redis.call('INCRBY', BATCH.keys[1], BATCH.sum)
redis.call('INCR', BATCH.keys[2])`)

// TestBatchEffectFinish: a batch effect's finish runs once per call with what the applied
// messages' bodies gathered (not a duplicate's), also when a later body fails (the messages
// before it are marked, and their sum written); a failing finish names its line and leaves
// every message unmarked.
func TestBatchEffectFinish(t *testing.T) {
	for _, b := range redistest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			rdb := b.Start(t)
			d, err := NewDedup(rdb, DedupConfig{Name: "finish", WatermarkOnly: true})
			require.NoError(t, err)
			keys := []string{d.Key(3, "sum"), d.Key(3, "finishes")}
			op := func(seq, amount int64, arg string) Op {
				return Op{Msg: msgOf(3, "k", seq), Keys: keys, Args: []any{amount, arg}}
			}
			read := func() (sum, finishes int64) {
				sum, err := rdb.Get(ctx, keys[0]).Int64()
				require.NoError(t, err)
				finishes, err = rdb.Get(ctx, keys[1]).Int64()
				require.NoError(t, err)
				return sum, finishes
			}

			out, err := d.ApplyBatch(ctx, sumEffect, []Op{op(1, 1, "ok"), op(2, 2, "ok"), op(1, 100, "ok"), op(3, 4, "ok")})
			require.NoError(t, err)
			require.Equal(t, []Outcome{Applied, Applied, Duplicate, Applied}, out)
			sum, finishes := read()
			require.Equal(t, []int64{7, 1}, []int64{sum, finishes}, "one finish, without the duplicate")

			_, err = d.ApplyBatch(ctx, sumEffect, []Op{op(4, 8, "ok"), op(5, 16, "ok"), op(6, 32, "fail"), op(7, 64, "ok")})
			require.ErrorContains(t, err, "refused")
			sum, finishes = read()
			require.Equal(t, []int64{7 + 8 + 16, 2}, []int64{sum, finishes}, "the messages before the failing one were finished")
			out, err = d.ApplyBatch(ctx, sumEffect, []Op{op(4, 8, "ok"), op(5, 16, "ok")})
			require.NoError(t, err)
			require.Equal(t, []Outcome{Duplicate, Duplicate}, out, "and marked")

			_, err = d.ApplyBatch(ctx, sumEffect, []Op{op(6, 6, "ok"), op(7, 7, "ok")})
			require.ErrorContains(t, err, "finish line 3:")
			sum, finishes = read()
			require.Equal(t, []int64{31, 3 - 1}, []int64{sum, finishes}, "the failing finish wrote nothing")
			out, err = d.ApplyBatch(ctx, sumEffect, []Op{op(6, 6, "ok"), op(7, 1, "ok")})
			require.NoError(t, err)
			require.Equal(t, []Outcome{Applied, Applied}, out, "nothing was marked")
			sum, finishes = read()
			require.Equal(t, []int64{38, 3}, []int64{sum, finishes})
		})
	}
}
