package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// ledgerModel generates a plausible event history and the projection it must yield.
type ledgerModel struct {
	partitions int
	evs        []Event
	version    map[string]int64
	want       map[string]*AccountSummary
	totals     Totals
	bad        int
}

func newLedgerModel(partitions int) *ledgerModel {
	return &ledgerModel{partitions: partitions, version: map[string]int64{}, want: map[string]*AccountSummary{},
		totals: Totals{Posted: map[string]int64{}, Held: map[string]int64{}}}
}

func (l *ledgerModel) emit(account, typ string, data any) {
	l.version[account]++
	raw, _ := json.Marshal(data)
	l.evs = append(l.evs, Event{ID: EventID(account, l.version[account]), Type: typ, Account: account,
		Version: l.version[account], Time: time.Now().UTC(), Data: raw})
	s := l.want[account]
	if s == nil {
		s = &AccountSummary{Account: account, Posted: map[string]int64{}, Held: map[string]int64{}}
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
		l.emit(a, TypeAccountOpened, map[string]any{"allow_negative": i == 0, "metadata": map[string]string{"n": a}})
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
			l.money(a, TypeDeposited, cur, amt, 0, map[string]any{"operation_id": fmt.Sprint("op", i), "amount": amt})
		case 2:
			l.money(a, TypeWithdrawn, cur, -amt, 0, map[string]any{"operation_id": fmt.Sprint("op", i), "amount": amt})
		case 3:
			id := fmt.Sprint("tr", i)
			l.money(a, TypeTransferDebited, cur, -amt, 0, map[string]any{"transfer_id": id, "amount": amt, "to": b})
			l.money(b, TypeTransferCredited, cur, amt, 0, map[string]any{"transfer_id": id, "amount": amt, "from": a})
		case 4:
			id := fmt.Sprint("tr", i)
			l.money(a, TypeTransferDebited, cur, -amt, 0, map[string]any{"transfer_id": id, "amount": amt, "to": b})
			l.money(a, TypeTransferRefunded, cur, amt, 0, map[string]any{"transfer_id": id, "amount": amt})
		case 5:
			id := fmt.Sprint("h", i)
			l.money(a, TypeHoldPlaced, cur, 0, amt, map[string]any{"hold_id": id, "amount": amt, "expires_at": time.Now()})
			captured := amt / 2
			l.money(a, TypeHoldCaptured, cur, -captured, -amt, map[string]any{"hold_id": id, "amount": captured, "released": amt - captured})
		case 6:
			id := fmt.Sprint("h", i)
			l.money(a, TypeHoldPlaced, cur, 0, amt, map[string]any{"hold_id": id, "amount": amt, "expires_at": time.Now()})
			typ := TypeHoldVoided
			if i%2 == 0 {
				typ = TypeHoldExpired
			}
			l.money(a, typ, cur, 0, -amt, map[string]any{"hold_id": id, "amount": amt})
		case 7:
			if i%3 == 0 {
				l.emit(a, "NoteAdded", map[string]any{"note": "unknown to the projector"})
				l.totals.Unknown++
			} else {
				l.money(a, TypeHoldPlaced, cur, 0, amt, map[string]any{"hold_id": fmt.Sprint("h", i), "amount": amt})
			}
		}
	}
	// One event of a known type with unusable data: dead-lettered, not projected.
	a := accounts[1]
	l.version[a]++
	l.evs = append(l.evs, Event{ID: EventID(a, l.version[a]), Type: TypeDeposited, Account: a, Version: l.version[a],
		Data: json.RawMessage(`{"currency":"USD","amount":-5}`)})
	l.bad++
}

// waitDelivered waits until r's group has no lag in any partition.
func waitDelivered(t *testing.T, r *Relay) {
	t.Helper()
	waitFor(t, 30*time.Second, func() bool {
		sts, err := r.Status(context.Background())
		require.NoError(t, err)
		for _, st := range sts {
			if st.Backlog != 0 {
				return false
			}
		}
		return true
	}, "group %s delivered everything", r.cfg.Group)
}

// readProjection reads every account summary and the totals of pr.
func readProjection(t *testing.T, pr *Projector, partitions int) (map[string]AccountSummary, Totals) {
	t.Helper()
	ctx := context.Background()
	out := map[string]AccountSummary{}
	for p := 0; p < partitions; p++ {
		ids, err := pr.Accounts(ctx, p)
		require.NoError(t, err)
		for _, id := range ids {
			s, err := pr.Account(ctx, p, id)
			require.NoError(t, err)
			for c, v := range s.Posted {
				if v == 0 {
					delete(s.Posted, c)
				}
			}
			for c, v := range s.Held {
				if v == 0 {
					delete(s.Held, c)
				}
			}
			out[id] = s
		}
	}
	tot, err := pr.Totals(ctx)
	require.NoError(t, err)
	for _, m := range []map[string]int64{tot.Posted, tot.Held} {
		for c, v := range m {
			if v == 0 {
				delete(m, c)
			}
		}
	}
	return out, tot
}

// TestProjector: the live projector matches an independent model of the history; a rebuild
// from the start of the outbox into fresh keys (another group, another name) equals the
// live projection; delivering everything again to the live projector changes nothing.
func TestProjector(t *testing.T) {
	ctx := context.Background()
	rdb := newClient(t, redistest.MustStart(t).Addr())
	const partitions = 4
	model := newLedgerModel(partitions)
	model.generate(accountNames(8), 400)
	xaddEvents(t, rdb, DefaultPrefix, partitions, model.evs)

	run := func(group, name string) (*Projector, *Relay) {
		pr, err := NewProjector(rdb, ProjectorConfig{Name: name, Partitions: partitions})
		require.NoError(t, err)
		cfg := testConfig(t, partitions, group+"-owner", pr)
		cfg.Group = group
		cfg.MaxAttempts = 2
		r, err := NewRelay(rdb, newTestLeaser(rdb, group, nil), cfg)
		require.NoError(t, err)
		stop := startRelay(t, r)
		waitDelivered(t, r)
		stop()
		return pr, r
	}

	live, r := run("relay", "projector")
	got, tot := readProjection(t, live, partitions)
	require.Len(t, got, len(model.want))
	for id, want := range model.want {
		w := *want
		for _, m := range []map[string]int64{w.Posted, w.Held} {
			for c, v := range m {
				if v == 0 {
					delete(m, c)
				}
			}
		}
		require.Equal(t, w, got[id], "account %s", id)
	}
	wantTot := model.totals
	for _, m := range []map[string]int64{wantTot.Posted, wantTot.Held} {
		for c, v := range m {
			if v == 0 {
				delete(m, c)
			}
		}
	}
	require.Equal(t, wantTot, tot)
	require.Equal(t, int64(len(model.evs)-model.bad), live.Dedup().Stats().Applied)
	var dead int64
	for p := 0; p < partitions; p++ {
		st, err := r.PartitionStatus(ctx, p)
		require.NoError(t, err)
		dead += st.DeadLetters
	}
	require.Equal(t, int64(model.bad), dead, "the unusable event was dead-lettered")

	rebuilt, _ := run("rebuild", "rebuilt")
	got2, tot2 := readProjection(t, rebuilt, partitions)
	require.Equal(t, got, got2, "rebuild equals the live projection")
	require.Equal(t, tot, tot2)

	// Everything once more into the live projector: all duplicates, nothing changes.
	again, err := NewProjector(rdb, ProjectorConfig{Name: "projector", Partitions: partitions})
	require.NoError(t, err)
	cfg := testConfig(t, partitions, "again-owner", again)
	cfg.Group = "again"
	cfg.MaxAttempts = 2
	ra, err := NewRelay(rdb, newTestLeaser(rdb, "again", nil), cfg)
	require.NoError(t, err)
	stop := startRelay(t, ra)
	waitDelivered(t, ra)
	stop()
	require.Zero(t, again.Dedup().Stats().Applied)
	require.Equal(t, int64(len(model.evs)-model.bad), again.Dedup().Stats().Duplicates)
	got3, tot3 := readProjection(t, live, partitions)
	require.Equal(t, got, got3)
	require.Equal(t, tot, tot3)

	_, err = live.Account(ctx, 0, "nobody")
	require.ErrorIs(t, err, ErrNoSummary)
}

// TestProjectorBackends: the projector works on Cluster and miniredis too.
func TestProjectorBackends(t *testing.T) {
	for name, connect := range backends() {
		if name == "standalone" {
			continue // TestProjector
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			rdb := connect(t)
			pr, err := NewProjector(rdb, ProjectorConfig{Partitions: 2})
			require.NoError(t, err)
			model := newLedgerModel(2)
			model.generate([]string{"x", "y", "z"}, 30)
			evs := model.evs[:len(model.evs)-1] // without the bad one
			byP := map[int][]Message{}
			for _, e := range evs {
				p := partitionOf(e.Account, 2)
				byP[p] = append(byP[p], Message{Partition: p, Event: e})
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
