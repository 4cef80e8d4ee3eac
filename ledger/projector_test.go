package ledger_test

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
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
	got, tot := readProjection(t, live, partitions)
	require.Len(t, got, len(model.want))
	for id, want := range model.want {
		w := *want
		withoutZeros(w.Posted, w.Held)
		require.Equal(t, w, got[id], "account %s", id)
	}
	wantTot := model.totals
	withoutZeros(wantTot.Posted, wantTot.Held)
	require.Equal(t, wantTot, tot)
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
