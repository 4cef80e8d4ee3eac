package outbox

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

func msgOf(p int, key string, seq int64) Message {
	return Message{Partition: p, ID: MessageID(key, seq), Key: key, Seq: seq, Type: "T", Payload: []byte(`{}`)}
}

// countEffect increments a counter hash field per message: the number of times the effect ran.
var countEffect = NewEffect(`return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)`)

// failEffect fails when ARGV[1] is "fail", before writing anything.
var failEffect = NewEffect(`
if ARGV[1] == 'fail' then return redis.error_reply('effect refused') end
return redis.call('HINCRBY', KEYS[1], 'n', 1)`)

// TestDedup runs the Dedup contract on standalone Redis, Cluster and miniredis.
func TestDedup(t *testing.T) {
	for _, b := range redistest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			count := func(d *Dedup, p int, id string) int64 {
				n, err := rdb.HGet(ctx, d.Key(p, "count"), id).Int64()
				if errors.Is(err, redis.Nil) {
					return 0
				}
				require.NoError(t, err)
				return n
			}
			apply := func(d *Dedup, m Message) Outcome {
				o, err := d.Apply(ctx, m, countEffect, []string{d.Key(m.Partition, "count")}, m.ID)
				require.NoError(t, err)
				return o
			}

			t.Run("window bound evicts old IDs", func(t *testing.T) {
				d, err := NewDedup(rdb, DedupConfig{Name: "window", Window: 10})
				require.NoError(t, err)
				// Sequence 0: ID-only dedup, so the window alone decides.
				for i := 0; i < 25; i++ {
					m := Message{Partition: 1, ID: fmt.Sprintf("ev-%d", i), Key: "a"}
					require.Equal(t, Applied, apply(d, m))
				}
				n, err := rdb.ZCard(ctx, d.idsKey(1)).Result()
				require.NoError(t, err)
				require.Equal(t, int64(10), n, "the window holds at most Window IDs")
				recent := Message{Partition: 1, ID: "ev-24", Key: "a"}
				require.Equal(t, Duplicate, apply(d, recent))
				old := Message{Partition: 1, ID: "ev-0", Key: "a"}
				seen, err := d.Seen(ctx, old)
				require.NoError(t, err)
				require.False(t, seen, "ev-0 was evicted from the window")
				require.Equal(t, int64(1), count(d, 1, "ev-24"))
			})

			t.Run("watermark rejects stale versions", func(t *testing.T) {
				d, err := NewDedup(rdb, DedupConfig{Name: "wm", Window: 2})
				require.NoError(t, err)
				for v := int64(1); v <= 5; v++ {
					require.Equal(t, Applied, apply(d, msgOf(2, "bob", v)))
				}
				// bob:2 left the 2-ID window; the watermark (5) still rejects it.
				require.Equal(t, Stale, apply(d, msgOf(2, "bob", 2)))
				require.Equal(t, Duplicate, apply(d, msgOf(2, "bob", 5)))
				wm, err := d.Watermark(ctx, 2, "bob")
				require.NoError(t, err)
				require.Equal(t, int64(5), wm)
				require.Equal(t, int64(1), count(d, 2, MessageID("bob", 2)))
				seen, err := d.Seen(ctx, msgOf(2, "bob", 3))
				require.NoError(t, err)
				require.True(t, seen)
				st := d.Stats()
				require.Equal(t, DedupStats{Applied: 5, Duplicates: 1, Stale: 1}, st)
			})

			t.Run("skipped versions are accepted once", func(t *testing.T) {
				d, err := NewDedup(rdb, DedupConfig{Name: "gaps", Window: 1, MaxGaps: 3})
				require.NoError(t, err)
				require.Equal(t, Applied, apply(d, msgOf(0, "carol", 1)))
				require.Equal(t, Applied, apply(d, msgOf(0, "carol", 3))) // 2 is a gap
				require.Equal(t, Applied, apply(d, msgOf(0, "carol", 2))) // e.g. a replayed dead letter
				require.Equal(t, Duplicate, apply(d, msgOf(0, "carol", 2)))
				require.Equal(t, Applied, apply(d, msgOf(0, "carol", 4)))
				require.Equal(t, Stale, apply(d, msgOf(0, "carol", 2)), "the gap was filled once")
				require.Equal(t, Applied, apply(d, msgOf(0, "carol", 10))) // gaps 7,8,9 kept (MaxGaps 3)
				require.Equal(t, Stale, apply(d, msgOf(0, "carol", 5)))
				require.Equal(t, Applied, apply(d, msgOf(0, "carol", 8)))
				wm, err := d.Watermark(ctx, 0, "carol")
				require.NoError(t, err)
				require.Equal(t, int64(10), wm)
			})

			t.Run("mark and effect are atomic", func(t *testing.T) {
				d, err := NewDedup(rdb, DedupConfig{Name: "atomic"})
				require.NoError(t, err)
				m := msgOf(3, "dave", 1)
				_, err = d.Apply(ctx, m, failEffect, []string{d.Key(3, "n")}, "fail")
				require.Error(t, err)
				require.Contains(t, err.Error(), "effect refused")
				seen, err := d.Seen(ctx, m)
				require.NoError(t, err)
				require.False(t, seen, "no mark without the effect")
				wm, err := d.Watermark(ctx, 3, "dave")
				require.NoError(t, err)
				require.Zero(t, wm)
				o, err := d.Apply(ctx, m, failEffect, []string{d.Key(3, "n")}, "ok")
				require.NoError(t, err)
				require.Equal(t, Applied, o)
				o, err = d.Apply(ctx, m, failEffect, []string{d.Key(3, "n")}, "ok")
				require.NoError(t, err)
				require.Equal(t, Duplicate, o)
				n, err := rdb.HGet(ctx, d.Key(3, "n"), "n").Int()
				require.NoError(t, err)
				require.Equal(t, 1, n)
			})

			t.Run("batch stops at the failing effect", func(t *testing.T) {
				d, err := NewDedup(rdb, DedupConfig{Name: "batch"})
				require.NoError(t, err)
				ops := []Op{
					{Msg: msgOf(4, "erin", 1), Keys: []string{d.Key(4, "n")}, Args: []any{"ok"}},
					{Msg: msgOf(4, "erin", 2), Keys: []string{d.Key(4, "n")}, Args: []any{"fail"}},
					{Msg: msgOf(4, "erin", 3), Keys: []string{d.Key(4, "n")}, Args: []any{"ok"}},
				}
				_, err = d.ApplyBatch(ctx, failEffect, ops)
				require.Error(t, err)
				for v, want := range map[int64]bool{1: true, 2: false, 3: false} {
					seen, err := d.Seen(ctx, msgOf(4, "erin", v))
					require.NoError(t, err)
					require.Equal(t, want, seen, "version %d", v)
				}
				ops[1].Args = []any{"ok"}
				out, err := d.ApplyBatch(ctx, failEffect, ops)
				require.NoError(t, err)
				require.Equal(t, []Outcome{Duplicate, Applied, Applied}, out)
				_, err = d.ApplyBatch(ctx, failEffect, []Op{{Msg: msgOf(4, "x", 1)}, {Msg: msgOf(5, "y", 1)}})
				require.ErrorIs(t, err, ErrMixedPartitions)
			})

			t.Run("mark without effect", func(t *testing.T) {
				d, err := NewDedup(rdb, DedupConfig{Name: "mark"})
				require.NoError(t, err)
				m := msgOf(6, "frank", 1)
				o, err := d.Mark(ctx, m)
				require.NoError(t, err)
				require.Equal(t, Applied, o)
				o, err = d.Mark(ctx, m)
				require.NoError(t, err)
				require.Equal(t, Duplicate, o)
			})
		})
	}
}

func TestDedupConfigValidate(t *testing.T) {
	require.ErrorIs(t, DedupConfig{}.Validate(), ErrInvalidConfig)
	require.ErrorIs(t, DedupConfig{Name: "a{b}"}.Validate(), ErrInvalidConfig)
	require.ErrorIs(t, DedupConfig{Name: "a", Window: -1}.Validate(), ErrInvalidConfig)
	require.NoError(t, DedupConfig{Name: "a"}.Validate())
	require.ErrorIs(t, Config{}.Validate(), ErrInvalidConfig, "no sinks")
	require.ErrorIs(t, Config{Sinks: []Sink{nil}}.Validate(), ErrInvalidConfig)
	require.NoError(t, Config{Sinks: []Sink{funcSink(nil)}}.Validate())
	require.ErrorIs(t, Config{Partitions: -1, Sinks: []Sink{funcSink(nil)}}.Validate(), ErrInvalidConfig, "partitions")
	require.ErrorIs(t, AdminConfig{Partitions: -1}.Validate(), ErrInvalidConfig, "partitions")
}
