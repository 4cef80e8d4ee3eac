package ledger_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/internal/cputime"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
	"github.com/tally-ledger/tally/outbox"
)

// benchWorkers is the number of concurrent writers of BenchmarkModes.
const benchWorkers = 64

// BenchmarkModes compares the concurrency modes with and without group commit, on one hot
// account and on 10,000 accounts, with 64 concurrent writers calling the library (no
// HTTP) against a real redis-server; lock mode takes its leases on three more
// redis-servers (Redlock masters). Operations are deposits with one withdrawal in ten.
// Each sub-benchmark runs b.N operations and reports ops/s, errors, version conflicts per
// operation and commit script calls per operation (below 1 when group commit batches).
//
//	go test -run '^$' -bench Modes -benchtime 2s ./ledger
func BenchmarkModes(b *testing.B) {
	ctx := context.Background()
	rdb := redistest.MustStart(b).Client()
	locker := benchLocker(b, redistest.MustStartN(b, 3))
	for _, accounts := range []int{1, 10_000} {
		// The accounts are opened once per count and shared by the four ledgers below:
		// a Ledger keeps no state of its own in Redis beyond the accounts.
		prefix := fmt.Sprintf("bench%d", accounts)
		ids := benchAccounts(b, MustOpen(b, rdb, ledger.Config{Prefix: prefix}), accounts)
		for _, mode := range []ledger.Mode{ledger.ModeOptimistic, ledger.ModeLock} {
			for _, groupCommit := range []bool{true, false} {
				cfg := ledger.Config{Prefix: prefix, Mode: mode, DisableGroupCommit: !groupCommit}
				if mode == ledger.ModeLock {
					cfg.Locker = locker
				}
				l := MustOpen(b, rdb, cfg)
				name := fmt.Sprintf("accounts=%d/mode=%s/group_commit=%t", accounts, mode, groupCommit)
				b.Run(name, func(b *testing.B) { benchWrites(ctx, b, l, ids) })
			}
		}
	}
}

// BenchmarkProjectorDeliver measures the projector's cost in Redis: deposits of 10,000
// accounts of one partition delivered in batches of 14 (the size the relay hands over at
// ~10,000 writes/s on 16 partitions), and of one hot account in batches of 128, each after
// 120,000 events, so that a dedup window of the default 100,000 IDs would be full. It
// reports Redis's CPU per event and its used memory at the end.
//
//	go test -run '^$' -bench ProjectorDeliver -benchtime 20000x ./ledger
func BenchmarkProjectorDeliver(b *testing.B) {
	for _, c := range []struct{ accounts, batch int }{{10_000, 14}, {1, 128}} {
		b.Run(fmt.Sprintf("accounts=%d/batch=%d", c.accounts, c.batch), func(b *testing.B) {
			benchProjector(b, c.accounts, c.batch)
		})
	}
}

func benchProjector(b *testing.B, accounts, batch int) {
	ctx := context.Background()
	srv := redistest.MustStart(b)
	pr, err := ledger.NewProjector(srv.Client(), ledger.ProjectorConfig{Partitions: 1})
	if err != nil {
		b.Fatal(err)
	}
	version := make([]int64, accounts)
	next := 0
	events := func() []outbox.Message {
		msgs := make([]outbox.Message, batch)
		for i := range msgs {
			a := next % accounts
			next += 7919 // a prime: every account in turn, in a scattered order
			version[a]++
			e := ledger.Event{Account: fmt.Sprintf("acct-%d", a), Version: version[a], Type: ledger.EventDeposited,
				Time: time.Unix(0, 0).UTC(), Data: json.RawMessage(`{"currency":"USD","amount":5}`)}
			if e.Version == 1 {
				e.Type, e.Data = ledger.EventAccountOpened, json.RawMessage(`{}`)
			}
			e.ID = ledger.EventID(e.Account, e.Version)
			msgs[i] = projectorMessage(0, e)
		}
		return msgs
	}
	for range 120_000 / batch {
		if err := pr.Deliver(ctx, events()); err != nil {
			b.Fatal(err)
		}
	}
	cpu := srv.CPUSeconds()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		msgs := events()
		b.StartTimer()
		if err := pr.Deliver(ctx, msgs); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric((srv.CPUSeconds()-cpu)*1e6/float64(b.N*batch), "redis-µs/event")
	b.ReportMetric(srv.InfoFloat("memory", "used_memory")/1e6, "redis-MB")
}

// benchWrites runs b.N writes from benchWorkers goroutines and reports the metrics.
func benchWrites(ctx context.Context, b *testing.B, l *ledger.Ledger, ids []string) {
	before := l.Stats()
	var (
		next, failed atomic.Int64
		wg           sync.WaitGroup
		mu           sync.Mutex
		firstErr     error
	)
	b.ResetTimer()
	start := time.Now()
	for range benchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := benchWrite(ctx, l, ids); err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	st := l.Stats()
	ops := st.Operations - before.Operations
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(float64(failed.Load()), "errors")
	if ops > 0 {
		b.ReportMetric(float64(st.Commits-before.Commits)/float64(ops), "commits/op")
		b.ReportMetric(float64(st.Conflicts-before.Conflicts)/float64(ops), "conflicts/op")
	}
	if firstErr != nil {
		b.Logf("%d of %d operations failed; first: %v", failed.Load(), b.N, firstErr)
	}
}

// benchWrite deposits 1..100 into a random account, or (one time in ten) withdraws 1.
// Insufficient funds is an answer, not a failure.
func benchWrite(ctx context.Context, l *ledger.Ledger, ids []string) error {
	id := ids[rand.IntN(len(ids))]
	var err error
	if rand.IntN(10) == 0 {
		_, err = l.Withdraw(ctx, ledger.Withdraw{Account: id, Currency: "USD", Amount: 1}, ledger.WriteOptions{})
	} else {
		_, err = l.Deposit(ctx, ledger.Deposit{Account: id, Currency: "USD", Amount: 1 + rand.Int64N(100)}, ledger.WriteOptions{})
	}
	if errors.Is(err, ledger.ErrInsufficientFunds) {
		return nil
	}
	return err
}

// benchAccounts opens n accounts with a balance of 1,000,000 USD each, from benchWorkers
// goroutines, and returns their IDs.
func benchAccounts(b *testing.B, l *ledger.Ledger, n int) []string {
	b.Helper()
	ctx := context.Background()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("acct-%05d", i)
	}
	var (
		next   atomic.Int64
		failed atomic.Pointer[error]
		wg     sync.WaitGroup
	)
	for range min(benchWorkers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(n) && failed.Load() == nil; i = next.Add(1) - 1 {
				_, err := l.OpenAccount(ctx, ledger.OpenAccount{ID: ids[i]}, ledger.WriteOptions{})
				if err == nil {
					_, err = l.Deposit(ctx, ledger.Deposit{Account: ids[i], Currency: "USD", Amount: 1_000_000}, ledger.WriteOptions{})
				}
				if err != nil {
					failed.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatalf("open accounts: %v", *err)
	}
	return ids
}

// benchLocker returns a Locker over masters with the clients cmd/tally builds.
func benchLocker(b *testing.B, masters []*redistest.Server) *lock.Locker {
	b.Helper()
	clients := make([]redis.UniversalClient, len(masters))
	for i, m := range masters {
		c := redis.NewClient(lock.MasterOptions(m.Addr()))
		b.Cleanup(func() { c.Close() })
		clients[i] = c
	}
	l, err := lock.New(clients, lock.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	return l
}

// BenchmarkPendingHolds measures one writer on an account that keeps n pending holds,
// against a real redis-server: what a merchant account with many open card
// authorisations costs. op=deposit deposits; op=hold places a new hold and voids an old one
// (two writes an operation, the number of holds stays n); op=read reads the account (as
// GET /accounts/{id} does: from Redis, every hold). It reports the client's CPU per
// operation beside the wall time (Redis's is not in it).
//
//	go test -run '^$' -bench PendingHolds -benchtime 2000x ./ledger
func BenchmarkPendingHolds(b *testing.B) {
	ctx := context.Background()
	rdb := redistest.MustStart(b).Client()
	for _, n := range []int{0, 100, 1_000, 5_000} {
		for _, op := range []string{"deposit", "hold", "read"} {
			l := MustOpen(b, rdb, ledger.Config{Prefix: fmt.Sprintf("holds%d%s", n, op)})
			fund(b, l, "a", 1_000_000_000)
			for placed := 0; placed < n; placed += 1_000 {
				ops := make([]ledger.BatchOp, min(1_000, n-placed))
				for i := range ops {
					ops[i] = ledger.BatchOp{Type: ledger.OpHold, ID: fmt.Sprintf("h%d", placed+i), Account: "a", Currency: "USD", Amount: 1, Timeout: time.Hour}
				}
				if _, _, err := l.Batch(ctx, true, ops, ledger.WriteOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			next := 0 // holds h0..h(next-1) are voided, n0..n(next-1) placed
			b.Run(fmt.Sprintf("holds=%d/op=%s", n, op), func(b *testing.B) {
				start, measured := cputime.Process()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					var err error
					switch op {
					case "deposit":
						_, err = l.Deposit(ctx, ledger.Deposit{Account: "a", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
					case "read":
						_, err = l.Account(ctx, "a")
					default:
						_, err = l.PlaceHold(ctx, ledger.PlaceHold{Account: "a", ID: fmt.Sprintf("n%d", next), Currency: "USD", Amount: 1, Timeout: time.Hour})
						if err == nil && next < n {
							_, err = l.VoidHold(ctx, "a", fmt.Sprintf("h%d", next), ledger.WriteOptions{})
						}
						next++
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				if end, ok := cputime.Process(); ok && measured {
					b.ReportMetric(float64((end-start).Microseconds())/float64(b.N), "cpu-µs/op")
				}
			})
		}
	}
}
