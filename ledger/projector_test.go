package ledger_test

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
	"github.com/tally-ledger/tally/outbox"
)

// projectorPartition maps an account to a partition for the model tests, which write
// outbox entries themselves (any mapping works: the projector keys by the message's
// partition).
func projectorPartition(account string, partitions int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(account))
	return int(h.Sum32() % uint32(partitions))
}

// projectorMessage returns the outbox message that carries e in partition p, as the relay
// hands it to sinks.
func projectorMessage(p int, e ledger.Event) outbox.Message {
	enc, err := json.Marshal(e)
	if err != nil {
		panic(err)
	}
	return outbox.Message{Partition: p, ID: e.ID, Key: e.Account, Seq: e.Version, Type: e.Type, Payload: enc}
}

// xaddProjectorEvents appends evs to their partitions' outbox streams (prefix "tally"), as
// the commit script writes them.
func xaddProjectorEvents(t *testing.T, rdb redis.UniversalClient, partitions int, evs []ledger.Event) {
	t.Helper()
	ctx := context.Background()
	pipe := rdb.Pipeline()
	for _, e := range evs {
		p := projectorPartition(e.Account, partitions)
		pipe.XAdd(ctx, &redis.XAddArgs{
			Stream: outbox.StreamKey("tally", p),
			Values: outbox.EntryFields(projectorMessage(p, e)),
		})
	}
	_, err := pipe.Exec(ctx)
	require.NoError(t, err)
}

// ledgerModel generates a plausible event history and the projection it must yield.
type ledgerModel struct {
	partitions int
	evs        []ledger.Event
	version    map[string]int64
	want       map[string]*ledger.AccountSummary
	totals     ledger.Totals
	bad        int
}

func newLedgerModel(partitions int) *ledgerModel {
	return &ledgerModel{partitions: partitions, version: map[string]int64{}, want: map[string]*ledger.AccountSummary{},
		totals: ledger.Totals{Posted: map[string]int64{}, Held: map[string]int64{}}}
}

func (l *ledgerModel) emit(account, typ string, data any) {
	l.version[account]++
	raw, _ := json.Marshal(data)
	l.evs = append(l.evs, ledger.Event{ID: ledger.EventID(account, l.version[account]), Type: typ, Account: account,
		Version: l.version[account], Time: time.Now().UTC(), Data: raw})
	s := l.want[account]
	if s == nil {
		s = &ledger.AccountSummary{Account: account, Posted: map[string]int64{}, Held: map[string]int64{}}
		l.want[account] = s
	}
	s.Version = l.version[account]
	s.Events++
	l.totals.Events++
}

func (l *ledgerModel) money(account, typ, cur string, posted, held int64, data map[string]any) {
	data["currency"] = cur
	l.emit(account, typ, data)
	s := l.want[account]
	if posted != 0 {
		s.Posted[cur] += posted
		l.totals.Posted[cur] += posted
	}
	if held != 0 {
		s.Held[cur] += held
		l.totals.Held[cur] += held
	}
}

func (l *ledgerModel) generate(accounts []string, steps int) {
	for i, a := range accounts {
		l.emit(a, ledger.EventAccountOpened, map[string]any{"allow_negative": i == 0, "metadata": map[string]string{"n": a}})
		l.want[a].AllowNegative = i == 0
		l.totals.Accounts++
	}
	curs := []string{"USD", "EUR"}
	for i := 0; i < steps; i++ {
		a := accounts[rand.IntN(len(accounts))]
		b := accounts[rand.IntN(len(accounts))]
		cur := curs[rand.IntN(2)]
		amt := int64(1 + rand.IntN(1000))
		switch rand.IntN(8) {
		case 0, 1:
			l.money(a, ledger.EventDeposited, cur, amt, 0, map[string]any{"operation_id": fmt.Sprint("op", i), "amount": amt})
		case 2:
			l.money(a, ledger.EventWithdrawn, cur, -amt, 0, map[string]any{"operation_id": fmt.Sprint("op", i), "amount": amt})
		case 3:
			id := fmt.Sprint("tr", i)
			l.money(a, ledger.EventTransferDebited, cur, -amt, 0, map[string]any{"transfer_id": id, "amount": amt, "to": b})
			l.money(b, ledger.EventTransferCredited, cur, amt, 0, map[string]any{"transfer_id": id, "amount": amt, "from": a})
		case 4:
			id := fmt.Sprint("tr", i)
			l.money(a, ledger.EventTransferDebited, cur, -amt, 0, map[string]any{"transfer_id": id, "amount": amt, "to": b})
			l.money(a, ledger.EventTransferRefunded, cur, amt, 0, map[string]any{"transfer_id": id, "amount": amt})
		case 5:
			id := fmt.Sprint("h", i)
			l.money(a, ledger.EventHoldPlaced, cur, 0, amt, map[string]any{"hold_id": id, "amount": amt, "expires_at": time.Now()})
			captured := amt / 2
			l.money(a, ledger.EventHoldCaptured, cur, -captured, -amt, map[string]any{"hold_id": id, "amount": captured, "released": amt - captured})
		case 6:
			id := fmt.Sprint("h", i)
			l.money(a, ledger.EventHoldPlaced, cur, 0, amt, map[string]any{"hold_id": id, "amount": amt, "expires_at": time.Now()})
			typ := ledger.EventHoldVoided
			if i%2 == 0 {
				typ = ledger.EventHoldExpired
			}
			l.money(a, typ, cur, 0, -amt, map[string]any{"hold_id": id, "amount": amt})
		case 7:
			if i%3 == 0 {
				l.emit(a, "NoteAdded", map[string]any{"note": "unknown to the projector"})
				l.totals.Unknown++
			} else {
				l.money(a, ledger.EventHoldPlaced, cur, 0, amt, map[string]any{"hold_id": fmt.Sprint("h", i), "amount": amt})
			}
		}
	}
	// One event of a known type with unusable data: dead-lettered, not projected.
	a := accounts[1]
	l.version[a]++
	l.evs = append(l.evs, ledger.Event{ID: ledger.EventID(a, l.version[a]), Type: ledger.EventDeposited, Account: a,
		Version: l.version[a], Data: json.RawMessage(`{"currency":"USD","amount":-5}`)})
	l.bad++
}

// runProjectorRelay delivers every outbox entry of partitions 0..P-1 to pr through a relay
// of the given consumer group (leases from package lock on rdb), and stops the relay once
// the group has nothing left to deliver.
func runProjectorRelay(t *testing.T, rdb redis.UniversalClient, partitions int, group string, pr *ledger.Projector) *outbox.Relay {
	t.Helper()
	locker, err := lock.New([]redis.UniversalClient{rdb}, lock.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { locker.Close() })
	r, err := outbox.NewRelay(rdb, locker, outbox.Config{
		Partitions: partitions, Group: group, Owner: group + "-owner", Sinks: []outbox.Sink{pr},
		PollInterval: 5 * time.Millisecond, BlockTimeout: 100 * time.Millisecond, LeaseRetry: 100 * time.Millisecond,
		RetryBackoff: 5 * time.Millisecond, MaxRetryBackoff: 50 * time.Millisecond, MaxAttempts: 2,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			require.NoError(t, <-done)
		}
	}
	t.Cleanup(stop)
	waitDrained(t, r, "group "+group+" delivered everything")
	stop()
	return r
}

// withoutZeros deletes the zero amounts of ms (a currency whose sum returned to 0).
func withoutZeros(ms ...map[string]int64) {
	for _, m := range ms {
		for c, v := range m {
			if v == 0 {
				delete(m, c)
			}
		}
	}
}

// readProjection reads every account summary and the totals of pr.
func readProjection(t *testing.T, pr *ledger.Projector, partitions int) (map[string]ledger.AccountSummary, ledger.Totals) {
	t.Helper()
	ctx := context.Background()
	out := map[string]ledger.AccountSummary{}
	for p := 0; p < partitions; p++ {
		ids, err := pr.Accounts(ctx, p)
		require.NoError(t, err)
		for _, id := range ids {
			s, err := pr.Account(ctx, p, id)
			require.NoError(t, err)
			withoutZeros(s.Posted, s.Held)
			out[id] = s
		}
	}
	tot, err := pr.Totals(ctx)
	require.NoError(t, err)
	withoutZeros(tot.Posted, tot.Held)
	return out, tot
}

// requireModelProjection reads pr's projection of the model's partitions and requires it to
// be the model's; it returns what it read.
func requireModelProjection(t *testing.T, model *ledgerModel, pr *ledger.Projector) (map[string]ledger.AccountSummary, ledger.Totals) {
	t.Helper()
	got, tot := readProjection(t, pr, model.partitions)
	require.Len(t, got, len(model.want))
	for id, want := range model.want {
		w := *want
		withoutZeros(w.Posted, w.Held)
		require.Equal(t, w, got[id], "account %s", id)
	}
	wantTot := model.totals
	withoutZeros(wantTot.Posted, wantTot.Held)
	require.Equal(t, wantTot, tot)
	return got, tot
}

// TestProjector: the live projector matches an independent model of the history; a rebuild
// from the start of the outbox into fresh keys (another group, another name) equals the
// live projection; delivering everything again to the live projector changes nothing.
func TestProjector(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.MustStart(t).Client()
	const partitions = 4
	model := newLedgerModel(partitions)
	accounts := make([]string, 8)
	for i := range accounts {
		accounts[i] = fmt.Sprintf("acct-%03d", i)
	}
	model.generate(accounts, 400)
	xaddProjectorEvents(t, rdb, partitions, model.evs)

	newProjector := func(name string) *ledger.Projector {
		pr, err := ledger.NewProjector(rdb, ledger.ProjectorConfig{Name: name, Partitions: partitions})
		require.NoError(t, err)
		return pr
	}

	live := newProjector("projector")
	r := runProjectorRelay(t, rdb, partitions, "relay", live)
	got, tot := requireModelProjection(t, model, live)
	require.Equal(t, int64(len(model.evs)-model.bad), live.Dedup().Stats().Applied)
	var dead int64
	for p := 0; p < partitions; p++ {
		st, err := r.PartitionStatus(ctx, p)
		require.NoError(t, err)
		dead += st.DeadLetters
	}
	require.Equal(t, int64(model.bad), dead, "the unusable event was dead-lettered")

	rebuilt := newProjector("rebuilt")
	runProjectorRelay(t, rdb, partitions, "rebuild", rebuilt)
	got2, tot2 := readProjection(t, rebuilt, partitions)
	require.Equal(t, got, got2, "rebuild equals the live projection")
	require.Equal(t, tot, tot2)

	// Everything once more into the live projector: all duplicates, nothing changes.
	again := newProjector("projector")
	runProjectorRelay(t, rdb, partitions, "again", again)
	require.Zero(t, again.Dedup().Stats().Applied)
	require.Equal(t, int64(len(model.evs)-model.bad), again.Dedup().Stats().Duplicates)
	got3, tot3 := readProjection(t, live, partitions)
	require.Equal(t, got, got3)
	require.Equal(t, tot, tot3)

	_, err := live.Account(ctx, 0, "nobody")
	require.ErrorIs(t, err, ledger.ErrNoSummary)
}

// TestProjectorBackends: the projector works on Cluster and miniredis too.
func TestProjectorBackends(t *testing.T) {
	for _, b := range backends() {
		if b.Name == "standalone" {
			continue // TestProjector
		}
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			rdb := b.Start(t)
			pr, err := ledger.NewProjector(rdb, ledger.ProjectorConfig{Partitions: 2})
			require.NoError(t, err)
			model := newLedgerModel(2)
			model.generate([]string{"x", "y", "z"}, 30)
			evs := model.evs[:len(model.evs)-1] // without the bad one
			byP := map[int][]outbox.Message{}
			for _, e := range evs {
				p := projectorPartition(e.Account, 2)
				byP[p] = append(byP[p], projectorMessage(p, e))
			}
			for _, msgs := range byP {
				require.NoError(t, pr.Deliver(ctx, msgs))
				require.NoError(t, pr.Deliver(ctx, msgs)) // all duplicates
			}
			tot, err := pr.Totals(ctx)
			require.NoError(t, err)
			require.Equal(t, model.totals.Events, tot.Events)
			require.Equal(t, model.totals.Accounts, tot.Accounts)
			for c, v := range model.totals.Posted {
				require.Equal(t, v, tot.Posted[c])
			}
			require.Equal(t, int64(len(evs)), pr.Dedup().Stats().Duplicates)
		})
	}
}

// TestProjectorBatchSums: the projector gathers a call's events per account and writes
// each summary and the totals once per call, with exact sums beyond Lua's 2^53 (amounts
// that a double cannot hold, and sums that cross it); when an event's effect fails mid-call,
// the events before it are projected and marked, and a redelivery of the call projects
// the rest once.
func TestProjectorBatchSums(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			rdb := b.Start(t)
			pr, err := ledger.NewProjector(rdb, ledger.ProjectorConfig{Partitions: 1})
			require.NoError(t, err)
			version := map[string]int64{}
			event := func(account, typ string, amount int64) outbox.Message {
				version[account]++
				e := ledger.Event{Account: account, Version: version[account], Type: typ, Time: time.Unix(0, 0).UTC(),
					Data: json.RawMessage(fmt.Sprintf(`{"currency":"USD","amount":%d}`, amount))}
				if typ == ledger.EventAccountOpened {
					e.Data = json.RawMessage(`{"allow_negative":true}`)
				}
				e.ID = ledger.EventID(account, e.Version)
				return projectorMessage(0, e)
			}

			t.Run("exact sums", func(t *testing.T) {
				const p53 = int64(1) << 53
				amounts := map[string][]int64{
					"big":   {p53 + 1, p53/2 + 3, p53/2 + 5, 7},   // not doubles; the sum crosses 2^53
					"huge":  {1<<62 + 1, -(1<<62 - 1), 1<<61 + 3}, // far beyond, back, and beyond again
					"small": {5, -2},
				}
				var msgs []outbox.Message
				want := map[string]int64{}
				var total int64
				for _, a := range []string{"big", "huge", "small"} {
					msgs = append(msgs, event(a, ledger.EventAccountOpened, 0))
					for _, x := range amounts[a] {
						typ := ledger.EventDeposited
						if x < 0 {
							typ = ledger.EventWithdrawn
						}
						msgs = append(msgs, event(a, typ, max(x, -x)))
						want[a] += x
						total += x
					}
				}
				require.NoError(t, pr.Deliver(ctx, msgs), "one call")
				for a, w := range want {
					s, err := pr.Account(ctx, 0, a)
					require.NoError(t, err)
					require.Equal(t, w, s.Posted["USD"], "account %s", a)
					require.Equal(t, int64(len(amounts[a])+1), s.Events, "account %s", a)
					require.Equal(t, version[a], s.Version, "account %s", a)
					require.True(t, s.AllowNegative)
				}
				tot, err := pr.Totals(ctx)
				require.NoError(t, err)
				require.Equal(t, total, tot.Posted["USD"])
				require.Equal(t, int64(len(msgs)), tot.Events)
				require.Equal(t, int64(3), tot.Accounts)
			})

			t.Run("an effect fails mid-call", func(t *testing.T) {
				msgs := []outbox.Message{event("a", ledger.EventAccountOpened, 0), event("a", ledger.EventDeposited, 5),
					event("b", ledger.EventAccountOpened, 0), event("c", ledger.EventAccountOpened, 0),
					event("a", ledger.EventDeposited, 7)}
				before, err := pr.Totals(ctx)
				require.NoError(t, err)
				corrupt := pr.Dedup().Key(0, "acct:b")
				require.NoError(t, rdb.Set(ctx, corrupt, "not a hash", 0).Err())
				require.ErrorContains(t, pr.Deliver(ctx, msgs), "WRONGTYPE")
				s, err := pr.Account(ctx, 0, "a")
				require.NoError(t, err)
				require.Equal(t, int64(2), s.Events, "the events before b's were projected")
				require.Equal(t, int64(5), s.Posted["USD"])
				tot, err := pr.Totals(ctx)
				require.NoError(t, err)
				require.Equal(t, before.Events+2, tot.Events)

				require.NoError(t, rdb.Del(ctx, corrupt).Err())
				require.NoError(t, pr.Deliver(ctx, msgs), "the relay delivers the call again")
				s, err = pr.Account(ctx, 0, "a")
				require.NoError(t, err)
				require.Equal(t, int64(3), s.Events, "a's first two once")
				require.Equal(t, int64(12), s.Posted["USD"])
				for _, a := range []string{"b", "c"} {
					s, err := pr.Account(ctx, 0, a)
					require.NoError(t, err)
					require.Equal(t, int64(1), s.Events, "account %s", a)
				}
				tot, err = pr.Totals(ctx)
				require.NoError(t, err)
				require.Equal(t, before.Events+int64(len(msgs)), tot.Events)
				require.Equal(t, before.Accounts+3, tot.Accounts)
				require.Equal(t, before.Posted["USD"]+12, tot.Posted["USD"])
			})
		})
	}
}

// TestProjectorConcurrentRedeliveries: three consumers (projectors of one name, as relays
// that took over each other's partitions would be) deliver the whole history of every
// partition at the same time, each mostly in order (local swaps make gaps that later events
// fill, as replayed dead letters do) and in its own random batches, now and then giving a
// call up mid-flight (a deadline of a few microseconds: the script may or may not have run)
// and delivering that batch again. Every event is applied exactly once over the three, and the
// projection is the model's.
func TestProjectorConcurrentRedeliveries(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			rdb := b.Start(t)
			const partitions, workers = 2, 3
			model := newLedgerModel(partitions)
			model.generate([]string{"r0", "r1", "r2", "r3", "r4"}, 300)
			evs := model.evs[:len(model.evs)-1] // without the unusable one
			byP := make([][]outbox.Message, partitions)
			for _, e := range evs {
				p := projectorPartition(e.Account, partitions)
				byP[p] = append(byP[p], projectorMessage(p, e))
			}
			prs := make([]*ledger.Projector, workers)
			var wg sync.WaitGroup
			var abandoned atomic.Int64
			for w := range prs {
				pr, err := ledger.NewProjector(rdb, ledger.ProjectorConfig{Partitions: partitions})
				require.NoError(t, err)
				prs[w] = pr
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
					for p := range byP {
						// Mostly in order, with local swaps: gaps, and late events that fill
						// them (as replayed dead letters do).
						msgs := slices.Clone(byP[(p+w)%partitions])
						for i := range msgs {
							j := min(len(msgs)-1, i+rng.IntN(6))
							msgs[i], msgs[j] = msgs[j], msgs[i]
						}
						for len(msgs) > 0 {
							n := min(len(msgs), 1+rng.IntN(40))
							cctx, cancel := ctx, context.CancelFunc(func() {})
							if rng.IntN(4) == 0 {
								cctx, cancel = context.WithTimeout(ctx, time.Duration(1+rng.IntN(200))*time.Microsecond)
							}
							err := pr.Deliver(cctx, msgs[:n])
							cancel()
							if err != nil {
								if cctx.Err() == nil {
									t.Errorf("worker %d: %v", w, err)
									return
								}
								abandoned.Add(1)
								continue // as the relay does: the batch again
							}
							msgs = msgs[n:]
						}
					}
				})
			}
			wg.Wait()
			var applied, dup int64
			for _, pr := range prs {
				st := pr.Dedup().Stats()
				applied += st.Applied
				dup += st.Duplicates + st.Stale
			}
			t.Logf("%d events, %d calls given up; applied %d, duplicates %d", len(evs), abandoned.Load(), applied, dup)
			require.Equal(t, int64(len(evs)), applied, "every event applied exactly once over the consumers")
			requireModelProjection(t, model, prs[0])
		})
	}
}
