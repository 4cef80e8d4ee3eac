package outbox

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// modelEffect counts its runs per message ID (ARGV[1]) in a hash (KEYS[1]). Before writing
// anything, it fails when ARGV[2] says so: "fail" returns an error reply, "raise" raises a
// Lua error and "wrongtype" a failing redis.call (a hash command on KEYS[2], a string: not on
// KEYS[1], which a list command would create as a list when nothing was counted yet).
var modelEffect = NewEffect(`
if ARGV[2] == 'fail' then return redis.error_reply('effect refused') end
if ARGV[2] == 'raise' then error('effect raised') end
if ARGV[2] == 'wrongtype' then redis.call('HINCRBY', KEYS[2], 'x', 1) end
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)`)

// modelBatchEffect is modelEffect as a batch effect: the bodies fail as modelEffect's do,
// before they gather; they count their runs in BATCH, and the finish writes the counts with
// one HINCRBY per message ID and call.
var modelBatchEffect = NewBatchEffect(`
if ARGV[2] == 'fail' then return redis.error_reply('effect refused') end
if ARGV[2] == 'raise' then error('effect raised') end
if ARGV[2] == 'wrongtype' then redis.call('HINCRBY', KEYS[2], 'x', 1) end
if not BATCH.key then BATCH.key, BATCH.ids, BATCH.runs = KEYS[1], {}, {} end
if not BATCH.runs[ARGV[1]] then
  BATCH.ids[#BATCH.ids + 1] = ARGV[1]
  BATCH.runs[ARGV[1]] = 0
end
BATCH.runs[ARGV[1]] = BATCH.runs[ARGV[1]] + 1
return BATCH.runs[ARGV[1]]`, `
if not BATCH.key then return end
for _, id in ipairs(BATCH.ids) do redis.call('HINCRBY', BATCH.key, id, BATCH.runs[id]) end`)

// modelFailures are modelEffect's failures and what their errors say.
var modelFailures = map[string]string{"fail": "effect refused", "raise": "effect raised", "wrongtype": "WRONGTYPE"}

// dedupModel is the documented semantics of Dedup written plainly: a window of the last
// window IDs marked, a watermark and a set of at most maxGaps gaps (the highest) per key,
// and every message checked against all of them in order. With wmOnly
// (DedupConfig.WatermarkOnly) versioned messages leave the window alone.
type dedupModel struct {
	window, maxGaps int
	wmOnly          bool
	ids             []string // IDs marked, oldest first, at most window
	wm              map[string]int64
	gaps            map[string][]int64 // ascending
	runs            map[string]int64   // effect runs per ID
	gapFills        int                // Applied messages that filled a gap
}

func newDedupModel(window, maxGaps int, wmOnly bool) *dedupModel {
	return &dedupModel{window: window, maxGaps: maxGaps, wmOnly: wmOnly, wm: map[string]int64{},
		gaps: map[string][]int64{}, runs: map[string]int64{}}
}

// windowed reports whether m's ID goes into (and is checked against) the window.
func (d *dedupModel) windowed(m Message) bool { return m.Seq == 0 || !d.wmOnly }

// outcome is what Dedup must do with m now, without changing the model.
func (d *dedupModel) outcome(m Message) (o Outcome, gap bool) {
	if d.windowed(m) && slices.Contains(d.ids, m.ID) {
		return Duplicate, false
	}
	if m.Seq > 0 && m.Seq <= d.wm[m.Key] {
		if slices.Contains(d.gaps[m.Key], m.Seq) {
			return Applied, true
		}
		if d.wmOnly {
			return Duplicate, false
		}
		return Stale, false
	}
	return Applied, false
}

// apply applies m (its effect ran) and returns its outcome.
func (d *dedupModel) apply(m Message) Outcome {
	o, gap := d.outcome(m)
	if o != Applied {
		return o
	}
	d.runs[m.ID]++
	if d.windowed(m) {
		d.ids = append(d.ids, m.ID)
		if len(d.ids) > d.window {
			d.ids = d.ids[1:]
		}
	}
	switch {
	case gap:
		d.gapFills++
		d.gaps[m.Key] = slices.DeleteFunc(d.gaps[m.Key], func(g int64) bool { return g == m.Seq })
	case m.Seq > 0:
		for g := max(d.wm[m.Key]+1, m.Seq-int64(d.maxGaps)); g < m.Seq; g++ {
			d.gaps[m.Key] = append(d.gaps[m.Key], g)
		}
		if n := len(d.gaps[m.Key]); n > d.maxGaps {
			d.gaps[m.Key] = d.gaps[m.Key][n-d.maxGaps:]
		}
		d.wm[m.Key] = m.Seq
	}
	return Applied
}

// opIDs returns the message IDs of ops, for failure messages.
func opIDs(ops []Op) []string {
	ids := make([]string, len(ops))
	for i, op := range ops {
		ids[i] = op.Msg.ID
	}
	return ids
}

// TestDedupModel drives ApplyBatch with random batches of one partition — new messages in
// order, jumps ahead (gaps), late fills of the gaps, redeliveries of recent and old messages
// (duplicates, and stale ones once the small window evicted them), Seq 0 messages (ID
// only), and now and then an effect that fails mid-batch in each way an effect can fail
// (the messages before it stay applied and marked) — and compares every outcome, the
// effect's runs per message, the watermarks, Seen and the window's size with dedupModel;
// with and without WatermarkOnly.
func TestDedupModel(t *testing.T) {
	for _, b := range redistest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			t.Run("the window moves within a batch", func(t *testing.T) {
				// Window 2: z1 leaves the window when z3 is marked, in the same batch, and
				// is applied again, as when every message came in a batch of its own; the
				// versioned a:1 is stale then, and a:3 is still a duplicate.
				d, err := NewDedup(rdb, DedupConfig{Name: "inbatch", Window: 2})
				require.NoError(t, err)
				z := func(id string) Message { return Message{Partition: 1, ID: id, Key: "z"} }
				var ops []Op
				for _, m := range []Message{z("z1"), z("z2"), z("z3"), z("z1"), z("z3"),
					msgOf(1, "a", 1), msgOf(1, "a", 2), msgOf(1, "a", 3), msgOf(1, "a", 1), msgOf(1, "a", 3)} {
					ops = append(ops, Op{Msg: m, Keys: []string{d.Key(1, "runs")}, Args: []any{m.ID, "ok"}})
				}
				out, err := d.ApplyBatch(ctx, modelEffect, ops)
				require.NoError(t, err)
				require.Equal(t, []Outcome{Applied, Applied, Applied, Applied, Duplicate,
					Applied, Applied, Applied, Stale, Duplicate}, out)
				// Watermark only: the a messages leave the window to the z ones, so z1 stays
				// in it, and a:1 is a duplicate by its watermark.
				d, err = NewDedup(rdb, DedupConfig{Name: "inbatch-wm", Window: 2, WatermarkOnly: true})
				require.NoError(t, err)
				for i := range ops {
					ops[i].Keys = []string{d.Key(1, "runs-wm")}
				}
				out, err = d.ApplyBatch(ctx, modelEffect, ops)
				require.NoError(t, err)
				require.Equal(t, []Outcome{Applied, Applied, Applied, Applied, Duplicate,
					Applied, Applied, Applied, Duplicate, Duplicate}, out)
				ids, err := rdb.ZRange(ctx, d.idsKey(1), 0, -1).Result()
				require.NoError(t, err)
				require.Equal(t, []string{"z3", "z1"}, ids)
			})
			for _, wmOnly := range []bool{false, true} {
				t.Run(fmt.Sprintf("random, watermark only %v", wmOnly), func(t *testing.T) {
					dedupModelWalk(t, rdb, fmt.Sprintf("model-%v", wmOnly), modelEffect, wmOnly, b.Name == "embedded")
				})
			}
			t.Run("random, batch effect, watermark only", func(t *testing.T) {
				dedupModelWalk(t, rdb, "model-batch", modelBatchEffect, true, b.Name == "embedded")
			})
		})
	}
}

// dedupModelWalk is TestDedupModel's random walk with eff (modelEffect or
// modelBatchEffect), on a Dedup of its own called name.
func dedupModelWalk(t *testing.T, rdb redis.UniversalClient, name string, eff *Effect, wmOnly, embedded bool) {
	ctx := context.Background()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	const window, maxGaps, part = 8, 3, 5
	d, err := NewDedup(rdb, DedupConfig{Name: name, Window: window, MaxGaps: maxGaps,
		WatermarkOnly: wmOnly})
	require.NoError(t, err)
	model := newDedupModel(window, maxGaps, wmOnly)
	runsKey, stringKey := d.Key(part, "runs"), d.Key(part, "string")
	require.NoError(t, rdb.Set(ctx, stringKey, "not a hash", 0).Err())
	keys := []string{"a", "b", "c"}
	produced := map[string]int64{} // the highest Seq produced per key
	var sent []Message             // every message sent so far
	pick := func() Message {
		k := keys[rng.IntN(len(keys))]
		switch r := rng.IntN(20); {
		case r < 7 || len(sent) == 0: // the next one in order
			produced[k]++
		case r < 9: // a jump ahead: the skipped ones come later, if ever
			produced[k] += int64(2 + rng.IntN(4))
		case r < 12: // a Seq 0 message, from a small set of IDs
			return Message{Partition: part, ID: "z" + strconv.Itoa(rng.IntN(12)), Key: k}
		case r < 15: // a recent one again
			return sent[max(0, len(sent)-1-rng.IntN(6))]
		case r < 17: // one of the last few produced: often a late gap fill
			produced[k] = max(produced[k], 1)
			return msgOf(part, k, produced[k]-rng.Int64N(min(produced[k], 6)))
		default: // any one produced so far, sent or skipped
			produced[k] = max(produced[k], 1)
			return msgOf(part, k, 1+rng.Int64N(produced[k]))
		}
		return msgOf(part, k, produced[k])
	}
	var stats DedupStats
	failures := map[string]int{}
	const batches = 300
	for i := 0; i < batches; i++ {
		n := 1 + rng.IntN(12) // some batches mark more than window IDs
		ops := make([]Op, n)
		// Now and then (every failure at least every 60 batches) the effect of a new
		// message fails.
		fail, failure := -1, ""
		modes := []string{"fail", "raise", "wrongtype"}
		if i%20 == 10 || rng.IntN(20) == 0 {
			fail = rng.IntN(n)
			failure = modes[(i/20)%3]
			if i%20 != 10 {
				failure = modes[rng.IntN(3)]
			}
		}
		for j := range ops {
			m := pick()
			if j == fail {
				k := keys[rng.IntN(len(keys))]
				produced[k]++
				m = msgOf(part, k, produced[k])
			}
			sent = append(sent, m)
			arg := "ok"
			if j == fail {
				arg = failure
			}
			ops[j] = Op{Msg: m, Keys: []string{runsKey, stringKey}, Args: []any{m.ID, arg}}
		}
		// What the model says, message by message; a failing effect stops the batch.
		want := make([]Outcome, 0, n)
		failed := false
		for j, op := range ops {
			if j == fail {
				failed = true
				break
			}
			want = append(want, model.apply(op.Msg))
		}
		got, err := d.ApplyBatch(ctx, eff, ops)
		if failed {
			failures[failure]++
			require.ErrorContains(t, err, modelFailures[failure], "batch %d: %v", i, opIDs(ops))
			if failure == "wrongtype" && !embedded {
				// A failed redis.call's error keeps its code (miniredis words
				// script errors its own way).
				var rerr redis.Error
				require.ErrorAs(t, err, &rerr)
				require.True(t, strings.HasPrefix(rerr.Error(), "WRONGTYPE "), rerr.Error())
			}
		} else {
			require.NoError(t, err, "batch %d", i)
			require.Equal(t, want, got, "batch %d: %v", i, opIDs(ops))
			for _, o := range got {
				switch o {
				case Applied:
					stats.Applied++
				case Duplicate:
					stats.Duplicates++
				case Stale:
					stats.Stale++
				}
			}
		}
		if slices.Contains(want, Applied) {
			// The batch trimmed the window to the window newest IDs, failed or not.
			ids, err := rdb.ZRange(ctx, d.idsKey(part), 0, -1).Result()
			require.NoError(t, err)
			if len(model.ids)+len(ids) > 0 { // nil or empty alike
				require.Equal(t, model.ids, ids, "batch %d: the window, oldest first", i)
			}
		}
		runs, err := rdb.HGetAll(ctx, runsKey).Result()
		require.NoError(t, err)
		require.Len(t, runs, len(model.runs), "batch %d", i)
		for id, n := range model.runs {
			require.Equal(t, strconv.FormatInt(n, 10), runs[id], "batch %d: runs of %s", i, id)
		}
		wms, err := d.Watermarks(ctx, part)
		require.NoError(t, err)
		require.Equal(t, len(model.wm), len(wms), "batch %d", i)
		for k, w := range model.wm {
			require.Equal(t, w, wms[k], "batch %d: watermark of %s", i, k)
		}
		m := pick()
		o, _ := model.outcome(m)
		seen, err := d.Seen(ctx, m)
		require.NoError(t, err)
		require.Equal(t, o != Applied, seen, "batch %d: Seen(%s), the model says %s", i, m.ID, o)
	}
	require.Equal(t, stats, d.Stats())
	// The random walk covered every case, Seq 0 messages applied again after the window
	// evicted them included.
	reapplied := 0
	for id, n := range model.runs {
		if id[0] == 'z' && n > 1 {
			reapplied++
		}
	}
	t.Logf("%d batches: %+v, %d gap fills, failed batches %v, %d Seq 0 IDs applied again",
		batches, stats, model.gapFills, failures, reapplied)
	require.NotZero(t, stats.Duplicates)
	if wmOnly {
		require.Zero(t, stats.Stale)
	} else {
		require.NotZero(t, stats.Stale)
	}
	require.NotZero(t, model.gapFills)
	require.Len(t, failures, len(modelFailures))
	require.NotZero(t, reapplied)
}

// TestDedupConcurrent: workers deliver the same messages (several keys, and Seq 0 ones)
// concurrently, each in its own shuffled order and batches, with MaxGaps and Window large
// enough to remember everything: every message's effect runs exactly once, exactly one
// worker sees it Applied, and every key's watermark ends at its last Seq.
func TestDedupConcurrent(t *testing.T) {
	for _, b := range redistest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			for _, wmOnly := range []bool{false, true} {
				t.Run(fmt.Sprintf("watermark only %v", wmOnly), func(t *testing.T) { dedupConcurrent(t, rdb, wmOnly) })
			}
		})
	}
}

// dedupConcurrent is TestDedupConcurrent's run on a Dedup of its own, with or without
// WatermarkOnly.
func dedupConcurrent(t *testing.T, rdb redis.UniversalClient, wmOnly bool) {
	ctx := context.Background()
	const part, perKey, workers = 2, 60, 4
	keys := []string{"a", "b", "c"}
	d, err := NewDedup(rdb, DedupConfig{Name: fmt.Sprintf("concurrent-%v", wmOnly), Window: 1000, MaxGaps: perKey,
		WatermarkOnly: wmOnly})
	require.NoError(t, err)
	runsKey := d.Key(part, "runs")
	var msgs []Message
	for _, k := range keys {
		for s := int64(1); s <= perKey; s++ {
			msgs = append(msgs, msgOf(part, k, s))
		}
	}
	for i := 0; i < 20; i++ {
		msgs = append(msgs, Message{Partition: part, ID: fmt.Sprintf("zero-%d", i), Key: keys[i%3]})
	}
	applied := make([]map[string]int, workers)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			order := slices.Clone(msgs)
			// Mostly in order with local shuffles, so that both in-order applies and
			// gap fills happen.
			for i := range order {
				j := min(len(order)-1, i+rng.IntN(8))
				order[i], order[j] = order[j], order[i]
			}
			applied[w] = map[string]int{}
			for len(order) > 0 {
				n := min(len(order), 1+rng.IntN(10))
				ops := make([]Op, n)
				for i, m := range order[:n] {
					ops[i] = Op{Msg: m, Keys: []string{runsKey}, Args: []any{m.ID, "ok"}}
				}
				out, err := d.ApplyBatch(ctx, modelEffect, ops)
				if err != nil {
					errs <- err
					return
				}
				for i, o := range out {
					if o == Applied {
						applied[w][order[i].ID]++
					}
				}
				order = order[n:]
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	runs, err := rdb.HGetAll(ctx, runsKey).Result()
	require.NoError(t, err)
	require.Len(t, runs, len(msgs))
	for _, m := range msgs {
		require.Equal(t, "1", runs[m.ID], "effect runs of %s", m.ID)
		n := 0
		for w := range applied {
			n += applied[w][m.ID]
		}
		require.Equal(t, 1, n, "workers that saw %s applied", m.ID)
	}
	for _, k := range keys {
		wm, err := d.Watermark(ctx, part, k)
		require.NoError(t, err)
		require.Equal(t, int64(perKey), wm, "watermark of %s", k)
	}
	st := d.Stats()
	require.Equal(t, int64(len(msgs)), st.Applied)
	require.Equal(t, int64((workers-1)*len(msgs)), st.Duplicates+st.Stale)
}
