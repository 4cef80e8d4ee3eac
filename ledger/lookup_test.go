package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// lookupVocab is the metadata pairs the lookup tests draw from: few, so pairs repeat, with
// one value at the 512-byte limit and one empty.
var lookupVocab = [][2]string{{"order_id", "1"}, {"order_id", "2"}, {"customer", "42"}, {"customer", ""},
	{"note", strings.Repeat("x", 512)}, {"k:{x}", "v\x00w"}}

// randomMetadata returns up to three pairs of lookupVocab (nil about a third of the time).
func randomMetadata(rng *rand.Rand) map[string]string {
	n := rng.IntN(4)
	if n == 0 {
		return nil
	}
	md := map[string]string{}
	for range n {
		p := lookupVocab[rng.IntN(len(lookupVocab))]
		md[p[0]] = p[1]
	}
	return md
}

// allTransfersByMetadata pages through TransfersByMetadata with page size limit and requires
// every page to be in ID order, after the previous one, with a cursor exactly when more follow.
func allTransfersByMetadata(t *testing.T, l *ledger.Ledger, key, value string, limit int) []ledger.Transfer {
	t.Helper()
	var out []ledger.Transfer
	q := ledger.MetadataQuery{Key: key, Value: value, Limit: limit}
	for pages := 0; ; pages++ {
		require.Less(t, pages, 10_000, "paging must end")
		page, err := l.TransfersByMetadata(context.Background(), q)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page.Transfers), limit)
		out = append(out, page.Transfers...)
		if page.Next == "" {
			break
		}
		require.Len(t, page.Transfers, limit, "a page with a next cursor is full (no prefix)")
		q.Cursor = page.Next
	}
	require.True(t, slices.IsSortedFunc(out, func(a, b ledger.Transfer) int { return strings.Compare(a.ID, b.ID) }))
	require.Len(t, slices.CompactFunc(slices.Clone(out), func(a, b ledger.Transfer) bool { return a.ID == b.ID }), len(out), "each once")
	return out
}

func allAccountsByMetadata(t *testing.T, l *ledger.Ledger, q ledger.MetadataQuery) []string {
	t.Helper()
	out := []string{}
	for pages := 0; ; pages++ {
		require.Less(t, pages, 10_000, "paging must end")
		page, err := l.AccountsByMetadata(context.Background(), q)
		require.NoError(t, err)
		for _, a := range page.Accounts {
			require.Equal(t, q.Value, a.Metadata[q.Key])
			out = append(out, a.ID)
		}
		if page.Next == "" {
			break
		}
		q.Cursor = page.Next
	}
	require.True(t, sort.StringsAreSorted(out))
	require.Len(t, slices.Compact(slices.Clone(out)), len(out), "each once")
	return out
}

// scanned returns, for pair, the sorted IDs among ids whose record (as GetTransfer or Account
// read it) has that pair: the answer a lookup must give, from the records themselves.
func scannedTransfers(t *testing.T, l *ledger.Ledger, ids []string, pair [2]string) []string {
	t.Helper()
	out := []string{}
	for _, id := range ids {
		tr, err := l.GetTransfer(context.Background(), id)
		if errors.Is(err, ledger.ErrNotFound) {
			continue
		}
		require.NoError(t, err)
		if v, ok := tr.Metadata[pair[0]]; ok && v == pair[1] {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

func scannedAccounts(t *testing.T, l *ledger.Ledger, ids []string, pair [2]string) []string {
	t.Helper()
	out := []string{}
	for _, id := range ids {
		acc, err := l.Account(context.Background(), id)
		if errors.Is(err, ledger.ErrAccountNotFound) {
			continue
		}
		require.NoError(t, err)
		if v, ok := acc.Metadata[pair[0]]; ok && v == pair[1] {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

func transferIDs(ts []ledger.Transfer) []string {
	out := []string{}
	for _, t := range ts {
		out = append(out, t.ID)
	}
	return out
}

// TestMetadataLookup creates random accounts and transfers with random metadata (transfers
// within and across partitions, some refused) and requires every lookup, paged with small
// limits over every partition, to give exactly the records that have the pair, each once,
// in ID order, as GetTransfer and Account show them.
func TestMetadataLookup(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "md", Partitions: 130}) // more than lookupChunk: pages merge partitions read in several round trips
			rng := rand.New(rand.NewPCG(1, uint64(len(b.Name))))
			var accounts []string
			for i := range 30 {
				id := fmt.Sprintf("acc%02d", i)
				if i%3 == 0 {
					id = fmt.Sprintf("shop%d..acc%02d", i%2, i) // placement tags: same-partition pairs
				}
				_, err := l.OpenAccount(ctx, ledger.OpenAccount{ID: id, Metadata: randomMetadata(rng)}, ledger.WriteOptions{})
				require.NoError(t, err)
				_, err = l.Deposit(ctx, ledger.Deposit{Account: id, Currency: "USD", Amount: 100}, ledger.WriteOptions{})
				require.NoError(t, err)
				accounts = append(accounts, id)
			}
			var ids []string
			for i := range 60 {
				from, to := accounts[rng.IntN(len(accounts))], accounts[rng.IntN(len(accounts))]
				if from == to {
					continue
				}
				id := fmt.Sprintf("t%03d", rng.IntN(1000))
				amount := int64(1 + rng.IntN(60)) // some exceed the balance: refused
				if i%7 == 0 {
					to = "missing" // refused: no such destination
				}
				_, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: id, From: from, To: to, Currency: "USD", Amount: amount, Metadata: randomMetadata(rng)})
				if err != nil {
					require.Truef(t, errors.Is(err, ledger.ErrInsufficientFunds) || errors.Is(err, ledger.ErrAccountNotFound) ||
						errors.Is(err, ledger.ErrIdempotencyKeyReused), "%v", err)
				}
				ids = append(ids, id)
			}
			found := 0
			for _, pair := range append(lookupVocab, [2]string{"order_id", "nope"}, [2]string{"absent", "1"}) {
				want := scannedTransfers(t, l, ids, pair)
				found += len(want)
				for _, limit := range []int{1, 3, ledger.DefaultLookupLimit} {
					got := allTransfersByMetadata(t, l, pair[0], pair[1], limit)
					require.Equal(t, want, transferIDs(got), "transfers with %q=%q, limit %d", pair[0], pair[1], limit)
					for _, tr := range got {
						rec, err := l.GetTransfer(ctx, tr.ID)
						require.NoError(t, err)
						require.Equal(t, rec, tr, "a lookup shows the record as GetTransfer does")
					}
				}
				wantAcc := scannedAccounts(t, l, accounts, pair)
				require.Equal(t, wantAcc, allAccountsByMetadata(t, l, ledger.MetadataQuery{Key: pair[0], Value: pair[1], Limit: 2}))
				// A tenant's view: accounts with a prefix only, read as a range.
				tenant := []string{}
				for _, id := range wantAcc {
					if strings.HasPrefix(id, "shop1..") {
						tenant = append(tenant, id)
					}
				}
				require.Equal(t, tenant, allAccountsByMetadata(t, l, ledger.MetadataQuery{Key: pair[0], Value: pair[1], Limit: 1, Prefix: "shop1.."}))
			}
			require.Positive(t, found, "the test found transfers by metadata")

			t.Run("bad queries are invalid", func(t *testing.T) {
				for name, q := range map[string]ledger.MetadataQuery{
					"no key":        {Value: "1"},
					"long key":      {Key: strings.Repeat("k", 65), Value: "1"},
					"long value":    {Key: "k", Value: strings.Repeat("v", 513)},
					"limit too big": {Key: "k", Limit: ledger.MaxLookupLimit + 1},
					"limit < 0":     {Key: "k", Limit: -1},
					"cursor":        {Key: "k", Cursor: "!!"},
					"cursor not id": {Key: "k", Cursor: "Ojo"}, // "::"
				} {
					_, err := l.TransfersByMetadata(ctx, q)
					require.ErrorIs(t, err, ledger.ErrInvalid, name)
					_, err = l.AccountsByMetadata(ctx, q)
					require.ErrorIs(t, err, ledger.ErrInvalid, name)
				}
			})
		})
	}
}

// TestMetadataLookupPrefixFiltersTransfers: a tenant (prefix) sees only transfers whose two
// accounts carry its prefix, on pages that may be short but still page through all.
func TestMetadataLookupPrefixFiltersTransfers(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	ctx := context.Background()
	l := MustOpen(t, rdb, ledger.Config{Prefix: "mdp"})
	for _, id := range []string{"a..1", "a..2", "b..1", "b..2"} {
		fund(t, l, id, 100)
	}
	md := map[string]string{"order_id": "7"}
	for i, p := range [][2]string{{"a..1", "a..2"}, {"b..1", "b..2"}, {"a..2", "a..1"}, {"b..2", "b..1"}} {
		_, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: fmt.Sprintf("t%d", i), From: p[0], To: p[1], Currency: "USD", Amount: 1, Metadata: md})
		require.NoError(t, err)
	}
	var got []string
	q := ledger.MetadataQuery{Key: "order_id", Value: "7", Limit: 1, Prefix: "a.."}
	for {
		page, err := l.TransfersByMetadata(ctx, q)
		require.NoError(t, err)
		for _, tr := range page.Transfers {
			got = append(got, tr.ID)
		}
		if page.Next == "" {
			break
		}
		q.Cursor = page.Next
	}
	assert.Equal(t, []string{"t0", "t2"}, got)
}

// TestMetadataIndexAgreesWithRecords runs concurrent creates with duplicate IDs (the same
// request, and another request under the same ID), refusals and cross-partition transfers,
// then a transfer left debited by a crash and finished by the process manager, and requires
// the index to give exactly the records that have each pair after each step. The index is
// written by the script call that writes the record, so there is no moment between them.
func TestMetadataIndexAgreesWithRecords(t *testing.T) {
	for _, b := range backends()[:2] { // standalone and Cluster: real Redis, concurrent scripts
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "mdc", Partitions: 16})
			var accounts []string
			var mu sync.Mutex
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 7))
					for range 15 {
						id := fmt.Sprintf("a%02d", rng.IntN(24)) // duplicates: opened once
						_, err := l.OpenAccount(ctx, ledger.OpenAccount{ID: id, Metadata: randomMetadata(rng)}, ledger.WriteOptions{})
						if err == nil {
							_, err = l.Deposit(ctx, ledger.Deposit{Account: id, Currency: "USD", Amount: 50}, ledger.WriteOptions{})
							assert.NoError(t, err)
						} else {
							assert.ErrorIs(t, err, ledger.ErrAccountExists)
						}
						mu.Lock()
						accounts = append(accounts, id)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			var ids []string
			for w := range 6 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 11))
					for range 20 {
						// Few IDs, sent by several workers: the same request twice, or another
						// request under a taken ID.
						id := fmt.Sprintf("t%02d", rng.IntN(40))
						req := ledger.TransferRequest{ID: id, From: fmt.Sprintf("a%02d", rng.IntN(24)), To: fmt.Sprintf("a%02d", rng.IntN(24)),
							Currency: "USD", Amount: int64(1 + rng.IntN(40)), Metadata: map[string]string{"order_id": id[1:2]}}
						if rng.IntN(2) == 0 {
							req.Metadata["customer"] = "42"
						}
						if req.From == req.To {
							continue
						}
						_, err := l.CreateTransfer(ctx, req)
						if err != nil {
							assert.Truef(t, errors.Is(err, ledger.ErrInsufficientFunds) || errors.Is(err, ledger.ErrAccountNotFound) ||
								errors.Is(err, ledger.ErrIdempotencyKeyReused) || ledger.IsReplayed(err), "%v", err)
						}
						mu.Lock()
						ids = append(ids, id)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			agree := func() int {
				t.Helper()
				n := 0
				for _, pair := range [][2]string{{"order_id", "0"}, {"order_id", "1"}, {"order_id", "2"}, {"order_id", "3"}, {"customer", "42"}} {
					want := scannedTransfers(t, l, ids, pair)
					n += len(want)
					require.Equal(t, want, transferIDs(allTransfersByMetadata(t, l, pair[0], pair[1], 3)), "transfers %v", pair)
				}
				for _, pair := range lookupVocab {
					want := scannedAccounts(t, l, accounts, pair)
					require.Equal(t, want, allAccountsByMetadata(t, l, ledger.MetadataQuery{Key: pair[0], Value: pair[1], Limit: 3}), "accounts %v", pair)
				}
				return n
			}
			require.Positive(t, agree(), "transfers were made")

			// A request that crashed right after the debit: the record and its index entries
			// exist together, pending; the process manager finishes it and both still agree.
			from, to := apart(l, "crash-")
			fund(t, l, from, 100)
			fund(t, l, to, 0)
			md := map[string]string{"order_id": "crash"}
			require.NoError(t, l.StartTransfer(ctx, ledger.TransferRequest{ID: "t-crash", From: from, To: to, Currency: "USD", Amount: 10, Metadata: md}))
			err := l.StartTransfer(ctx, ledger.TransferRequest{ID: "t-crash-refused", From: from, To: to, Currency: "USD", Amount: 1000, Metadata: md})
			require.ErrorIs(t, err, ledger.ErrInsufficientFunds)
			got := allTransfersByMetadata(t, l, "order_id", "crash", 1)
			require.Len(t, got, 1, "the refused transfer is not indexed")
			assert.Equal(t, ledger.TransferPending, got[0].Status)
			msg := debitedMessage(t, l, from, "t-crash")
			require.NoError(t, l.TransferManager().Deliver(ctx, []outbox.Message{msg, msg}))
			got = allTransfersByMetadata(t, l, "order_id", "crash", 1)
			require.Len(t, got, 1)
			assert.Equal(t, ledger.TransferCompleted, got[0].Status)
			ids = append(ids, "t-crash", "t-crash-refused")
			agree()
			requireVerified(t, l)
		})
	}
}

// TestVerifyChecksMetadataIndex: Verify finds an index entry missing for a record's pair,
// and one naming no record with the pair, on every backend.
func TestVerifyChecksMetadataIndex(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "mdv"})
			from, to := apart(l, "v-")
			_, err := l.OpenAccount(ctx, ledger.OpenAccount{ID: from, Metadata: map[string]string{"customer": "42"}}, ledger.WriteOptions{})
			require.NoError(t, err)
			_, err = l.Deposit(ctx, ledger.Deposit{Account: from, Currency: "USD", Amount: 10}, ledger.WriteOptions{})
			require.NoError(t, err)
			fund(t, l, to, 0)
			// A client's key may look like an index key's tail: Verify must not take its
			// record (a hash) for an index.
			_, err = l.Deposit(ctx, ledger.Deposit{Account: to, Currency: "USD", Amount: 1},
				ledger.WriteOptions{IdempotencyKey: "x}:md:a:" + strings.Repeat("ab", 16)})
			require.NoError(t, err)
			_, err = l.CreateTransfer(ctx, ledger.TransferRequest{ID: "tv", From: from, To: to, Currency: "USD", Amount: 1, Metadata: map[string]string{"order_id": "9"}})
			require.NoError(t, err)
			requireVerified(t, l)

			problems := func() []string {
				rep, err := l.Verify(ctx)
				require.NoError(t, err)
				var out []string
				for _, p := range rep.Problems {
					require.Equal(t, ledger.ProblemMetadataIndex, p.Kind, p.String())
					out = append(out, p.Detail)
				}
				return out
			}
			for _, c := range []struct {
				key string
				id  string
			}{{l.MetadataIndexKey(false, from, "customer", "42"), from}, {l.MetadataIndexKey(true, from, "order_id", "9"), "tv"}} {
				require.NoError(t, rdb.ZRem(ctx, c.key, c.id).Err())
				got := problems()
				require.Len(t, got, 1)
				assert.Contains(t, got[0], "is not in that index")
				require.NoError(t, rdb.ZAdd(ctx, c.key, redis.Z{Member: c.id}).Err())
				requireVerified(t, l)
			}
			for _, key := range []string{l.MetadataIndexKey(false, from, "customer", "43"), l.MetadataIndexKey(true, from, "order_id", "9")} {
				require.NoError(t, rdb.ZAdd(ctx, key, redis.Z{Member: "ghost"}, redis.Z{Member: from}).Err())
				got := problems()
				require.NotEmpty(t, got)
				assert.Contains(t, strings.Join(got, "\n"), "names ghost")
				// A record that exists but lacks the pair is no better than a missing one.
				assert.Contains(t, strings.Join(got, "\n"), "names "+from)
				require.NoError(t, rdb.Del(ctx, key).Err())
			}
		})
	}
}

// TestMetadataIndexUnderKilledConnections cuts the ledger's Redis connections before every
// other commit (the script may or may not have run when the client sees the error; the
// ledger retries with its operation token): every account and transfer is still indexed
// exactly once with its record, and Verify finds the indexes and records in agreement.
func TestMetadataIndexUnderKilledConnections(t *testing.T) {
	srv := redistest.MustStart(t)
	admin := srv.Client()
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1}) // no silent client retries
	t.Cleanup(func() { rdb.Close() })
	l := MustOpen(t, rdb, ledger.Config{Prefix: "mdkill", DisableGroupCommit: true})
	var attempts, killed atomic.Int64
	l.SetBeforeCommit(func() {
		if attempts.Add(1)%2 == 1 {
			n, err := admin.ClientKillByFilter(ctx, "TYPE", "normal", "SKIPME", "yes").Result()
			assert.NoError(t, err)
			killed.Add(n)
		}
	})
	var accounts, ids []string
	refused := 0
	for i := range 8 {
		id := fmt.Sprintf("k%d", i)
		_, err := l.OpenAccount(ctx, ledger.OpenAccount{ID: id, Metadata: map[string]string{"customer": fmt.Sprint(i % 2)}}, ledger.WriteOptions{})
		require.NoError(t, err)
		_, err = l.Deposit(ctx, ledger.Deposit{Account: id, Currency: "USD", Amount: 10}, ledger.WriteOptions{})
		require.NoError(t, err)
		accounts = append(accounts, id)
	}
	for i := range 12 {
		id := fmt.Sprintf("kt%02d", i)
		_, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: id, From: accounts[i%8], To: accounts[(i+3)%8], Currency: "USD",
			Amount: int64(2 + 3*(i%4)), Metadata: map[string]string{"order_id": fmt.Sprint(i % 3)}}) // 11: refused
		if err != nil {
			require.ErrorIs(t, err, ledger.ErrInsufficientFunds)
			refused++
		}
		ids = append(ids, id)
	}
	require.Positive(t, killed.Load(), "the fault was injected")
	require.Positive(t, refused, "some transfers were refused")
	l.SetBeforeCommit(nil)
	n := 0
	for _, pair := range [][2]string{{"order_id", "0"}, {"order_id", "1"}, {"order_id", "2"}} {
		want := scannedTransfers(t, l, ids, pair)
		n += len(want)
		require.Equal(t, want, transferIDs(allTransfersByMetadata(t, l, pair[0], pair[1], 2)))
	}
	require.Positive(t, n)
	for _, pair := range [][2]string{{"customer", "0"}, {"customer", "1"}} {
		require.Equal(t, scannedAccounts(t, l, accounts, pair), allAccountsByMetadata(t, l, ledger.MetadataQuery{Key: pair[0], Value: pair[1], Limit: 3}))
	}
	requireVerified(t, l)
}
