package ledger_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
	"github.com/tally-ledger/tally/outbox"
)

// TestOverdraftLimitConcurrent races withdrawals and holds — every request sent twice, by
// two goroutines, with one idempotency key (a hold's ID) — on an account with 300 USD and
// an overdraft limit of 500, asking for far more than 800. The available balance must end
// below zero (the limit is usable) and never below −500 (it is enforced in the commit),
// every key must be applied at most once with one answer for both senders, and the
// balance must equal the sum of what was applied. Both concurrency modes, group commit on.
func TestOverdraftLimitConcurrent(t *testing.T) {
	masters := redistest.MustStartN(t, 3)
	for _, b := range backends() {
		modes := []ledger.Mode{ledger.ModeOptimistic}
		if b.Name == "standalone" {
			modes = append(modes, ledger.ModeLock)
		}
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			for _, mode := range modes {
				t.Run(string(mode), func(t *testing.T) { runOverdraftRace(t, rdb, masters, mode) })
			}
		})
	}
}

func runOverdraftRace(t *testing.T, rdb redis.UniversalClient, masters []*redistest.Server, mode ledger.Mode) {
	cfg := ledger.Config{Prefix: fmt.Sprintf("od%d", time.Now().UnixNano()), Mode: mode, MaxRetries: 200}
	if mode == ledger.ModeLock {
		cfg.Locker = mustLocker(t, masters, lock.Config{TTL: 5 * time.Second, WaitTimeout: 20 * time.Second})
	}
	// Two ledgers on one Redis, as two processes: the senders of one key use different ones,
	// so their commits race through the version check (or the leases), not only within one
	// group commit.
	l, l2 := MustOpen(t, rdb, cfg), MustOpen(t, rdb, cfg)
	ctx := context.Background()
	const limit, funds = 500, 300
	_, err := l.OpenAccount(ctx, ledger.OpenAccount{ID: "od", OverdraftLimit: map[string]int64{"USD": limit}}, ledger.WriteOptions{})
	require.NoError(t, err)
	_, err = l.Deposit(ctx, ledger.Deposit{Account: "od", Currency: "USD", Amount: funds}, ledger.WriteOptions{})
	require.NoError(t, err)

	// Operation i: a withdrawal (even i, key "w<i>") or a hold (odd i, ID "h<i>") of
	// 10..49, each sent by two goroutines.
	const ops, workers = 80, 8
	amount := func(i int) int64 { return int64(10 + (i*37)%40) }
	run := func(l *ledger.Ledger, i int) (ledger.Receipt, error) {
		if i%2 == 0 {
			return l.Withdraw(ctx, ledger.Withdraw{Account: "od", Currency: "USD", Amount: amount(i)},
				ledger.WriteOptions{IdempotencyKey: fmt.Sprintf("w%d", i)})
		}
		return l.PlaceHold(ctx, ledger.PlaceHold{Account: "od", ID: fmt.Sprintf("h%d", i), Currency: "USD", Amount: amount(i), Timeout: time.Hour})
	}
	type answer struct {
		body    string
		refused bool
	}
	var mu sync.Mutex
	answers := map[int][]answer{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Worker w sends the operations ≡ w/2 (mod workers/2): each one by two workers,
			// in different orders.
			mine := []int{}
			for i := w / 2; i < ops; i += workers / 2 {
				mine = append(mine, i)
			}
			if w%2 == 1 {
				slices.Reverse(mine)
			}
			for _, i := range mine {
				rc, err := run([]*ledger.Ledger{l, l2}[w%2], i)
				if err != nil && !errors.Is(err, ledger.ErrInsufficientFunds) {
					t.Errorf("operation %d: %v", i, err)
					return
				}
				mu.Lock()
				answers[i] = append(answers[i], answer{body: string(rc.Body), refused: err != nil})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()

	var applied, refused int64
	for i := range ops {
		as := answers[i]
		require.Len(t, as, 2, "operation %d", i)
		require.Equal(t, as[0], as[1], "operation %d: both senders of one key get the same answer", i)
		if as[0].refused {
			refused++
		} else {
			applied += amount(i)
		}
	}
	acc := requireConsistent(t, l, "od")
	usd := acc.Balances["USD"]
	t.Logf("%s: applied %d, %d refused, available %d, stats %+v and %+v", mode, applied, refused, usd.Available, l.Stats(), l2.Stats())
	assert.Equal(t, funds-applied, usd.Available, "available = funds − what the applied operations took (each once)")
	assert.GreaterOrEqual(t, usd.Available, int64(-limit), "the overdraft limit is never passed")
	assert.Negative(t, usd.Available, "the overdraft limit is usable")
	assert.Positive(t, refused, "the demand exceeds funds + limit")
	spends := 0
	for _, e := range allEvents(t, l, "od") {
		if e.Type == ledger.EventWithdrawn || e.Type == ledger.EventHoldPlaced {
			spends++
		}
	}
	assert.Equal(t, ops-int(refused), spends, "one event per applied key")
	requireVerified(t, l)
}

// TestOverdraftLimitChanges sets, lowers and removes a limit and spends around it: a
// refusal stays final for its key after the limit is raised, a limit lowered below what the
// account owes only blocks further spending (and verify accepts the balance), and replay
// gives the snapshot's limits.
func TestOverdraftLimitChanges(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			l := MustOpen(t, b.Start(t), ledger.Config{})
			ctx := context.Background()
			key := func(k string) ledger.WriteOptions { return ledger.WriteOptions{IdempotencyKey: k} }
			MustOpenAccount(t, l, "acc", false)
			_, err := l.Deposit(ctx, ledger.Deposit{Account: "acc", Currency: "USD", Amount: 100}, ledger.WriteOptions{})
			require.NoError(t, err)
			withdraw := func(k string, n int64) error {
				_, err := l.Withdraw(ctx, ledger.Withdraw{Account: "acc", Currency: "USD", Amount: n}, key(k))
				return err
			}
			setLimit := func(k string, lim map[string]int64) *ledger.Account {
				rc, err := l.SetOverdraftLimit(ctx, ledger.SetOverdraftLimit{Account: "acc", OverdraftLimit: lim}, key(k))
				require.NoError(t, err)
				var acc ledger.Account
				require.NoError(t, json.Unmarshal(rc.Body, &acc))
				return &acc
			}
			require.ErrorIs(t, withdraw("k1", 150), ledger.ErrInsufficientFunds)

			acc := setLimit("p1", map[string]int64{"USD": 100, "EUR": 7})
			assert.Equal(t, map[string]int64{"USD": 100, "EUR": 7}, acc.OverdraftLimit)
			again := setLimit("p1", map[string]int64{"USD": 100, "EUR": 7})
			assert.Equal(t, acc, again, "PATCH replays with its key")
			err = withdraw("k1", 150)
			require.ErrorIs(t, err, ledger.ErrInsufficientFunds, "a refusal is final for its key")
			assert.True(t, ledger.IsReplayed(err))
			require.NoError(t, withdraw("k2", 150))
			require.ErrorIs(t, withdraw("k3", 51), ledger.ErrInsufficientFunds, "−50 − 51 passes −100")
			_, err = l.PlaceHold(ctx, ledger.PlaceHold{Account: "acc", ID: "h1", Currency: "USD", Amount: 50, Timeout: time.Hour})
			require.NoError(t, err, "a hold may use the limit")
			_, err = l.PlaceHold(ctx, ledger.PlaceHold{Account: "acc", ID: "h2", Currency: "USD", Amount: 1, Timeout: time.Hour})
			require.ErrorIs(t, err, ledger.ErrInsufficientFunds)

			acc = setLimit("p2", map[string]int64{"USD": 20, "EUR": 0})
			assert.Equal(t, map[string]int64{"USD": 20}, acc.OverdraftLimit, "0 removes a limit")
			assert.Equal(t, int64(-100), acc.Balances["USD"].Available, "lowering below the debt is allowed")
			require.ErrorIs(t, withdraw("k4", 1), ledger.ErrInsufficientFunds, "but blocks further spending")
			requireConsistent(t, l, "acc")
			requireVerified(t, l)

			acc = setLimit("p3", map[string]int64{"USD": 0})
			assert.Nil(t, acc.OverdraftLimit)
			snap := requireConsistent(t, l, "acc")
			assert.Nil(t, snap.OverdraftLimit)

			// Bad input changes nothing.
			for _, lim := range []map[string]int64{nil, {"USD": -1}, {"usd": 5}, {"": 5}} {
				_, err := l.SetOverdraftLimit(ctx, ledger.SetOverdraftLimit{Account: "acc", OverdraftLimit: lim}, ledger.WriteOptions{})
				require.ErrorIs(t, err, ledger.ErrInvalid, "%v", lim)
			}
			many := map[string]int64{}
			for i := range ledger.MaxOverdraftLimits + 1 {
				many[fmt.Sprintf("C%02d", i)] = 1
			}
			_, err = l.SetOverdraftLimit(ctx, ledger.SetOverdraftLimit{Account: "acc", OverdraftLimit: many}, ledger.WriteOptions{})
			require.ErrorIs(t, err, ledger.ErrInvalid)
			delete(many, "C00")
			setLimit("p4", many)
			_, err = l.SetOverdraftLimit(ctx, ledger.SetOverdraftLimit{Account: "acc", OverdraftLimit: map[string]int64{"USD": 1}}, ledger.WriteOptions{})
			require.ErrorIs(t, err, ledger.ErrTooManyOverdraftLimits)
			after, err := l.Account(ctx, "acc")
			require.NoError(t, err)
			assert.Equal(t, snap.Version+1, after.Version, "refused and malformed limits wrote nothing")

			// A limit given when opening.
			_, err = l.OpenAccount(ctx, ledger.OpenAccount{ID: "opened", OverdraftLimit: map[string]int64{"USD": 30, "EUR": 0}}, ledger.WriteOptions{})
			require.NoError(t, err)
			_, err = l.Withdraw(ctx, ledger.Withdraw{Account: "opened", Currency: "USD", Amount: 30}, ledger.WriteOptions{})
			require.NoError(t, err)
			opened := requireConsistent(t, l, "opened")
			assert.Equal(t, map[string]int64{"USD": 30}, opened.OverdraftLimit)
			requireVerified(t, l)
		})
	}
}

// TestAlertDefinitions creates, lists and deletes alerts, and checks their bounds.
func TestAlertDefinitions(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	l := MustOpen(t, rdb, ledger.Config{})
	ctx := context.Background()
	MustOpenAccount(t, l, "acc", false)
	t10 := int64(10)
	create := func(al ledger.Alert) (ledger.Alert, error) {
		al.Account = "acc"
		rc, err := l.CreateAlert(ctx, ledger.CreateAlert{Alert: al}, ledger.WriteOptions{})
		var out ledger.Alert
		if err == nil {
			require.NoError(t, json.Unmarshal(rc.Body, &out))
		}
		return out, err
	}
	a1, err := create(ledger.Alert{ID: "low", Currency: "USD", Below: &t10})
	require.NoError(t, err)
	assert.Equal(t, ledger.Alert{ID: "low", Account: "acc", Currency: "USD", Below: &t10}, a1)
	_, err = create(ledger.Alert{ID: "low", Currency: "USD", Above: &t10})
	require.ErrorIs(t, err, ledger.ErrAlertExists)
	for _, bad := range []ledger.Alert{{Currency: "USD"}, {Currency: "USD", Below: &t10, Above: &t10}, {Currency: "usd", Below: &t10}, {ID: "a b", Currency: "USD", Below: &t10}} {
		_, err := create(bad)
		require.ErrorIs(t, err, ledger.ErrInvalid, "%+v", bad)
	}
	auto, err := create(ledger.Alert{Currency: "EUR", Above: &t10})
	require.NoError(t, err)
	require.NotEmpty(t, auto.ID)
	for i := 2; i < ledger.MaxAlerts; i++ {
		_, err := create(ledger.Alert{ID: fmt.Sprintf("a%02d", i), Currency: "USD", Above: &t10})
		require.NoError(t, err)
	}
	_, err = create(ledger.Alert{ID: "one-too-many", Currency: "USD", Above: &t10})
	require.ErrorIs(t, err, ledger.ErrTooManyAlerts)
	list, err := l.Alerts(ctx, "acc")
	require.NoError(t, err)
	require.Len(t, list, ledger.MaxAlerts)
	rc, err := l.DeleteAlert(ctx, "acc", "low", ledger.WriteOptions{IdempotencyKey: "del"})
	require.NoError(t, err)
	again, err := l.DeleteAlert(ctx, "acc", "low", ledger.WriteOptions{IdempotencyKey: "del"})
	require.NoError(t, err)
	assert.Equal(t, rc.Body, again.Body)
	assert.True(t, again.Replayed)
	_, err = l.DeleteAlert(ctx, "acc", "low", ledger.WriteOptions{})
	require.ErrorIs(t, err, ledger.ErrNotFound)
	list, err = l.Alerts(ctx, "acc")
	require.NoError(t, err)
	require.Len(t, list, ledger.MaxAlerts-1)
	_, err = l.Alerts(ctx, "missing")
	require.ErrorIs(t, err, ledger.ErrAccountNotFound)
	requireConsistent(t, l, "acc")
	requireVerified(t, l)
}

// alertSink is a deduplicating consumer: through outbox.Dedup it appends each event it is
// given, once, to a Redis list of the event's partition ("<id> <type>"). One delivery in
// three fails after the effect (a crash before the acknowledgement), so the relay
// delivers those messages again.
type alertSink struct {
	dedup *outbox.Dedup
	mu    sync.Mutex
	calls int
}

var recordEvent = outbox.NewEffect(`redis.call('RPUSH', KEYS[1], ARGV[1])`)

func (s *alertSink) Deliver(ctx context.Context, msgs []outbox.Message) error {
	ops := make([]outbox.Op, len(msgs))
	for i, m := range msgs {
		ops[i] = outbox.Op{Msg: m, Keys: []string{s.dedup.Key(m.Partition, "delivered")}, Args: []any{m.ID + " " + m.Type}}
	}
	if _, err := s.dedup.ApplyBatch(ctx, recordEvent, ops); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.calls%3 == 1 { // the first delivery fails: at least one redelivery, however the relay batches
		return errors.New("crashed before the acknowledgement")
	}
	return nil
}

// startRelay runs a relay of owner "alerts" over sink until the returned stop is called.
func startRelay(t *testing.T, rdb redis.UniversalClient, prefix string, partitions int, sink outbox.Sink) (stop func(), r *outbox.Relay) {
	t.Helper()
	locker, err := lock.New([]redis.UniversalClient{rdb}, lock.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { locker.Close() })
	r, err = outbox.NewRelay(rdb, locker, outbox.Config{
		Prefix: prefix, Partitions: partitions, Owner: "alerts", Sinks: []outbox.Sink{sink},
		PollInterval: 5 * time.Millisecond, BlockTimeout: 100 * time.Millisecond, LeaseRetry: 100 * time.Millisecond,
		RetryBackoff: time.Millisecond, MaxRetryBackoff: 10 * time.Millisecond, MaxAttempts: 1000,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			assert.NoError(t, <-done) // may run on a worker goroutine: no FailNow
		})
	}
	t.Cleanup(stop)
	return stop, r
}

// TestAlertsRandomWalk walks the available balance of an account around three alerts'
// thresholds with deposits and withdrawals from several goroutines (some sent twice with
// one idempotency key), deleting one alert half way. The BalanceAlerts in the account's
// stream must be exactly the crossings recomputed from its other events, each right after
// the event that crossed. Meanwhile a relay delivers the outbox to a deduplicating
// consumer, is stopped half way and started again: the consumer must see every event of
// the stream (the alerts included) exactly once, in order.
func TestAlertsRandomWalk(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			const partitions = 2
			prefix := fmt.Sprintf("aw%d", time.Now().UnixNano())
			cfg := ledger.Config{Prefix: prefix, Partitions: partitions, MaxRetries: 200}
			l, l2 := MustOpen(t, rdb, cfg), MustOpen(t, rdb, cfg) // two processes
			ctx := context.Background()
			_, err := l.OpenAccount(ctx, ledger.OpenAccount{ID: "walk", OverdraftLimit: map[string]int64{"USD": 1000}}, ledger.WriteOptions{})
			require.NoError(t, err)
			_, err = l.Deposit(ctx, ledger.Deposit{Account: "walk", Currency: "USD", Amount: 100}, ledger.WriteOptions{})
			require.NoError(t, err)
			t100, t150, t0 := int64(100), int64(150), int64(0)
			for _, al := range []ledger.Alert{{ID: "low", Currency: "USD", Below: &t100}, {ID: "high", Currency: "USD", Above: &t150},
				{ID: "zero", Currency: "USD", Below: &t0}, {ID: "eur", Currency: "EUR", Below: &t100}} {
				al.Account = "walk"
				_, err := l.CreateAlert(ctx, ledger.CreateAlert{Alert: al}, ledger.WriteOptions{})
				require.NoError(t, err)
			}

			dedup, err := outbox.NewDedup(rdb, outbox.DedupConfig{Prefix: prefix, Name: "alerts"})
			require.NoError(t, err)
			sink := &alertSink{dedup: dedup}
			stop, _ := startRelay(t, rdb, prefix, partitions, sink)

			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			const workers, steps = 4, 40
			var wg sync.WaitGroup
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(seed, uint64(w)))
					l := []*ledger.Ledger{l, l2}[w%2]
					for i := range steps {
						if w == 0 && i == steps/2 {
							_, err := l.DeleteAlert(ctx, "walk", "zero", ledger.WriteOptions{})
							assert.NoError(t, err)
						}
						if w == 1 && i == steps/2 {
							stop() // the relay goes down half way; started again below
						}
						n := int64(1 + rng.IntN(40))
						k := ledger.WriteOptions{IdempotencyKey: fmt.Sprintf("w%d-%d", w, i)}
						deposit := rng.IntN(2) == 0
						for range 1 + rng.IntN(2) { // sometimes twice, with the key
							var err error
							if deposit {
								_, err = l.Deposit(ctx, ledger.Deposit{Account: "walk", Currency: "USD", Amount: n}, k)
							} else {
								_, err = l.Withdraw(ctx, ledger.Withdraw{Account: "walk", Currency: "USD", Amount: n}, k)
							}
							if err != nil && !errors.Is(err, ledger.ErrInsufficientFunds) {
								t.Errorf("step %d/%d: %v", w, i, err)
							}
						}
					}
				}()
			}
			wg.Wait()
			stop() // in case the walk ended before it
			_, r := startRelay(t, rdb, prefix, partitions, sink)

			// Recompute the crossings from the stream's other events.
			evs := allEvents(t, l, "walk")
			active := map[string]ledger.Alert{}
			var avail int64
			var want, got []ledger.BalanceAlertData
			for _, e := range evs {
				before := avail
				switch e.Type {
				case ledger.EventAlertCreated:
					var al ledger.Alert
					require.NoError(t, json.Unmarshal(e.Data, &al))
					active[al.ID] = al
				case ledger.EventAlertDeleted:
					var d ledger.AlertDeletedData
					require.NoError(t, json.Unmarshal(e.Data, &d))
					delete(active, d.AlertID)
				case ledger.EventDeposited, ledger.EventWithdrawn:
					var d ledger.MoneyData
					require.NoError(t, json.Unmarshal(e.Data, &d))
					if e.Type == ledger.EventDeposited {
						avail += d.Amount
					} else {
						avail -= d.Amount
					}
				case ledger.EventBalanceAlert:
					var d ledger.BalanceAlertData
					require.NoError(t, json.Unmarshal(e.Data, &d))
					got = append(got, d)
					continue
				}
				for _, id := range slices.Sorted(maps.Keys(active)) {
					al := active[id]
					if al.Currency != "USD" {
						continue
					}
					dir, th := ledger.AlertBelow, int64(0)
					if al.Below != nil {
						th = *al.Below
					} else {
						dir, th = ledger.AlertAbove, *al.Above
					}
					if (dir == ledger.AlertBelow && before >= th && avail < th) || (dir == ledger.AlertAbove && before <= th && avail > th) {
						want = append(want, ledger.BalanceAlertData{AlertID: id, Currency: "USD", Direction: dir, Threshold: th,
							AvailableBefore: before, AvailableAfter: avail, EventID: e.ID, Version: e.Version})
					}
				}
			}
			require.NotEmpty(t, want, "the walk crosses thresholds")
			require.Equal(t, want, got, "one BalanceAlert per crossing, in order")
			// Each alert right after the event that crossed (or the alert before it).
			for i, e := range evs {
				if e.Type == ledger.EventBalanceAlert {
					var d ledger.BalanceAlertData
					require.NoError(t, json.Unmarshal(e.Data, &d))
					prev := evs[i-1]
					require.True(t, prev.ID == d.EventID || prev.Type == ledger.EventBalanceAlert, "alert %s follows its crossing", e.ID)
				}
			}
			t.Logf("%d events, %d alerts; stats %+v and %+v", len(evs), len(got), l.Stats(), l2.Stats())

			// Delivery: every event once, in stream order, through the restart and the
			// redeliveries.
			p := l.Partition("walk")
			key := dedup.Key(p, "delivered")
			require.Eventually(t, func() bool {
				n, err := rdb.LLen(ctx, key).Result()
				return err == nil && n >= int64(len(evs))
			}, 30*time.Second, 5*time.Millisecond)
			waitDrained(t, r, "the relay delivers everything")
			delivered, err := rdb.LRange(ctx, key, 0, -1).Result()
			require.NoError(t, err)
			var stream []string
			for _, e := range evs {
				stream = append(stream, e.ID+" "+e.Type)
			}
			require.Equal(t, stream, delivered)
			assert.Positive(t, dedup.Stats().Duplicates+dedup.Stats().Stale, "redeliveries happened and were dropped")

			requireConsistent(t, l, "walk")
			requireVerified(t, l)
		})
	}
}

// TestProjectorAcceptsLimitAndAlertEvents delivers the new event types to the projector:
// it applies them as events of known types that move no money.
func TestProjectorAcceptsLimitAndAlertEvents(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	l := MustOpen(t, rdb, ledger.Config{})
	ctx := context.Background()
	_, err := l.OpenAccount(ctx, ledger.OpenAccount{ID: "pa", OverdraftLimit: map[string]int64{"USD": 50}}, ledger.WriteOptions{})
	require.NoError(t, err)
	_, err = l.SetOverdraftLimit(ctx, ledger.SetOverdraftLimit{Account: "pa", OverdraftLimit: map[string]int64{"USD": 80}}, ledger.WriteOptions{})
	require.NoError(t, err)
	zero := int64(0)
	_, err = l.CreateAlert(ctx, ledger.CreateAlert{Alert: ledger.Alert{ID: "neg", Account: "pa", Currency: "USD", Below: &zero}}, ledger.WriteOptions{})
	require.NoError(t, err)
	_, err = l.Withdraw(ctx, ledger.Withdraw{Account: "pa", Currency: "USD", Amount: 30}, ledger.WriteOptions{})
	require.NoError(t, err)
	_, err = l.DeleteAlert(ctx, "pa", "neg", ledger.WriteOptions{})
	require.NoError(t, err)

	evs := allEvents(t, l, "pa")
	var types []string
	msgs := make([]outbox.Message, len(evs))
	for i, e := range evs {
		types = append(types, e.Type)
		raw, err := json.Marshal(e)
		require.NoError(t, err)
		msgs[i] = outbox.Message{Partition: l.Partition("pa"), ID: e.ID, Key: e.Account, Seq: e.Version, Type: e.Type, Payload: raw}
	}
	require.Equal(t, []string{ledger.EventAccountOpened, ledger.EventOverdraftLimitSet, ledger.EventAlertCreated, ledger.EventWithdrawn,
		ledger.EventBalanceAlert, ledger.EventAlertDeleted}, types)
	pr, err := ledger.NewProjector(rdb, ledger.ProjectorConfig{})
	require.NoError(t, err)
	require.NoError(t, pr.Deliver(ctx, msgs))
	sum, err := pr.Account(ctx, l.Partition("pa"), "pa")
	require.NoError(t, err)
	assert.Equal(t, int64(len(evs)), sum.Events)
	assert.Equal(t, int64(-30), sum.Posted["USD"])
	tot, err := pr.Totals(ctx)
	require.NoError(t, err)
	assert.Zero(t, tot.Unknown, "every new type is known to the projector")
}
