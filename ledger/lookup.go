package ledger

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/internal/redisx"
)

// Metadata lookup: exact-match search of accounts and transfers by one metadata key/value.
//
// Each partition keeps one index per (kind, key, value): a sorted set with score 0 whose
// members are the IDs of the records of that partition created with that pair. It is
// written by the commit script call that writes the record (an extra ZADD of the same
// slice), so the two are never seen apart: not after a crash between any two round trips,
// not when the slice is skipped or the request refused. Only metadata given at creation is
// indexed (account open, transfer create); neither ever changes afterwards, and records are
// never deleted, so an index only grows. A lookup reads the index of every partition and
// merges the IDs in byte order (ZRANGEBYLEX), so a cursor (the last ID returned) pages
// through them all exactly once, in order.

// Limits of a metadata lookup page.
const (
	DefaultLookupLimit = 100
	MaxLookupLimit     = 1000
)

// Index kinds, part of an index key.
const (
	indexAccounts  = "a"
	indexTransfers = "t"
)

// lookupChunk is how many partitions one round trip of a lookup reads: it bounds the IDs
// held at once to lookupChunk × (limit+1), whatever the partition count.
const lookupChunk = 64

// metadataIndex names the index of pair key=value for records of kind in partition p. The
// pair is hashed (values are up to 512 bytes; the key's length first, so that no two pairs
// share an input); a lookup still compares each record's metadata, so a collision could
// never return a wrong record.
func (k keyspace) metadataIndex(p int, kind, key, value string) string {
	sum := sha256.Sum256([]byte(strconv.Itoa(len(key)) + ":" + key + value))
	return k.tag(p) + "md:" + kind + ":" + hex.EncodeToString(sum[:16])
}

// parseMetadataIndex returns the partition and kind of an index key metadataIndex names,
// and false for any other key.
func (k keyspace) parseMetadataIndex(key string) (p int, kind string, ok bool) {
	rest, found := strings.CutPrefix(key, k.prefix+":{")
	if !found {
		return 0, "", false
	}
	num, rest, found := strings.Cut(rest, "}:md:")
	p, err := strconv.Atoi(num)
	if !found || err != nil || p < 0 || p >= k.partitions || len(rest) != 2+32 || rest[1] != ':' {
		return 0, "", false
	}
	if kind = rest[:1]; kind != indexAccounts && kind != indexTransfers {
		return 0, "", false
	}
	if _, err := hex.DecodeString(rest[2:]); err != nil {
		return 0, "", false
	}
	return p, kind, k.tag(p)+"md:"+rest == key // the canonical spelling of p only
}

// indexMetadata adds the extra writes that index the record id of kind (in partition p) under
// each of its metadata pairs: nothing without metadata, so the commit path of records without
// metadata costs nothing more.
func (d *decision) indexMetadata(p int, kind, id string, md map[string]string) {
	for _, k := range slices.Sorted(maps.Keys(md)) { // sorted: the same request, the same script
		d.write("ZADD", d.keys.metadataIndex(p, kind, k, md[k]), 0, id)
	}
}

// MetadataQuery asks for the records created with metadata Key = Value (exact, byte for
// byte), in ID order.
type MetadataQuery struct {
	Key, Value string
	// Cursor is the Next of the previous page ("" for the first page). It is opaque.
	Cursor string
	// Limit is the page size, 1..MaxLookupLimit; 0 means DefaultLookupLimit.
	Limit int
	// Prefix, when set, confines the answer to accounts whose IDs start with it and to
	// transfers whose two accounts both do (a tenant's view).
	Prefix string
}

func (q MetadataQuery) validate() (after string, err error) {
	if len(q.Key) == 0 || len(q.Key) > 64 || len(q.Value) > 512 {
		return "", invalidf("a metadata key is 1 to 64 bytes, a value at most 512 bytes")
	}
	if q.Limit < 0 || q.Limit > MaxLookupLimit {
		return "", invalidf("limit must be 1..%d", MaxLookupLimit)
	}
	if q.Cursor == "" {
		return "", nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(q.Cursor)
	if err != nil || ValidateID("cursor", string(raw)) != nil {
		return "", invalidf("cursor is not one this API returned")
	}
	return string(raw), nil
}

// TransferPage is one page of a metadata lookup of transfers.
type TransferPage struct {
	Transfers []Transfer `json:"transfers"`
	// Next is the cursor of the next page, "" when this is the last one.
	Next string `json:"next_cursor,omitempty"`
}

// AccountPage is one page of a metadata lookup of accounts.
type AccountPage struct {
	Accounts []*Account `json:"accounts"`
	// Next is the cursor of the next page, "" when this is the last one.
	Next string `json:"next_cursor,omitempty"`
}

// TransfersByMetadata returns the transfers created with metadata q.Key = q.Value, in ID
// order, a page at a time. Refused transfers are not among them. With q.Prefix a page may
// hold fewer than q.Limit transfers (even none) and still have a Next. It returns an error
// wrapping ErrInvalid for a bad query or cursor.
func (l *Ledger) TransfersByMetadata(ctx context.Context, q MetadataQuery) (TransferPage, error) {
	hits, next, err := l.lookup(ctx, indexTransfers, q)
	if err != nil {
		return TransferPage{}, err
	}
	pipe := l.store.rdb.Pipeline()
	recs := make([]*redis.MapStringStringCmd, len(hits))
	for i, h := range hits {
		recs[i] = pipe.HGetAll(ctx, l.store.keys.transfer(h.p, h.id))
	}
	if len(hits) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return TransferPage{}, storeErr(ctx, err)
		}
	}
	page := TransferPage{Transfers: make([]Transfer, 0, len(hits)), Next: next}
	for i, h := range hits {
		t, err := parseTransfer(h.id, recs[i].Val())
		if errors.Is(err, ErrNotFound) {
			continue // an index entry without its record: Verify reports it; never returned
		}
		if err != nil {
			return TransferPage{}, err // a corrupt record, as GetTransfer answers it
		}
		if v, ok := t.Metadata[q.Key]; !ok || v != q.Value ||
			!strings.HasPrefix(t.From, q.Prefix) || !strings.HasPrefix(t.To, q.Prefix) {
			continue
		}
		page.Transfers = append(page.Transfers, t)
	}
	return page, nil
}

// AccountsByMetadata returns the accounts opened with metadata q.Key = q.Value, in ID
// order, a page at a time, as Account returns them. It returns an error wrapping
// ErrInvalid for a bad query or cursor.
func (l *Ledger) AccountsByMetadata(ctx context.Context, q MetadataQuery) (AccountPage, error) {
	hits, next, err := l.lookup(ctx, indexAccounts, q)
	if err != nil {
		return AccountPage{}, err
	}
	page := AccountPage{Accounts: make([]*Account, 0, len(hits)), Next: next}
	if len(hits) == 0 {
		return page, nil
	}
	ids := make([]string, len(hits))
	for i, h := range hits {
		ids[i] = h.id
	}
	snaps, _, err := l.store.read(ctx, ids, nil, l.cfg.Clock())
	if err != nil {
		return AccountPage{}, err
	}
	for _, id := range ids {
		acc := snaps[id].acc
		if v, ok := acc.Metadata[q.Key]; !acc.exists() || !ok || v != q.Value {
			continue // see TransfersByMetadata
		}
		page.Accounts = append(page.Accounts, acc)
	}
	return page, nil
}

// hit is an ID found in the index of partition p.
type hit struct {
	id string
	p  int
}

// lookup returns the first q.Limit IDs after the cursor in the indexes of kind for q's pair,
// across every partition, in byte order, and the cursor of the next page ("" when none
// follows). It reads lookupChunk partitions per round trip, each up to limit+1 IDs, and
// keeps only the smallest limit+1 seen so far; after the first chunk it asks only for IDs
// below the largest of those.
func (l *Ledger) lookup(ctx context.Context, kind string, q MetadataQuery) ([]hit, string, error) {
	after, err := q.validate()
	if err != nil {
		return nil, "", err
	}
	limit := q.Limit
	if limit == 0 {
		limit = DefaultLookupLimit
	}
	minLex, maxLex := "-", "+"
	if after != "" {
		minLex = "(" + after
	}
	if q.Prefix != "" && kind == indexAccounts { // account IDs carry the prefix: a range
		if after < q.Prefix {
			minLex = "[" + q.Prefix
		}
		maxLex = "(" + q.Prefix + "\xff" // IDs are ASCII: every ID with the prefix sorts below
	}
	var best []hit // sorted, at most limit+1
	for from := 0; from < l.cfg.Partitions; from += lookupChunk {
		to := min(from+lookupChunk, l.cfg.Partitions)
		upper := maxLex
		if len(best) == limit+1 {
			upper = "[" + best[limit].id
		}
		pipe := l.store.rdb.Pipeline()
		cmds := make([]*redis.StringSliceCmd, 0, to-from)
		for p := from; p < to; p++ {
			cmds = append(cmds, pipe.ZRangeByLex(ctx, l.store.keys.metadataIndex(p, kind, q.Key, q.Value),
				&redis.ZRangeBy{Min: minLex, Max: upper, Count: int64(limit + 1)}))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, "", storeErr(ctx, err)
		}
		for i, c := range cmds {
			for _, id := range c.Val() {
				best = append(best, hit{id: id, p: from + i})
			}
		}
		slices.SortFunc(best, func(a, b hit) int { return cmp.Compare(a.id, b.id) })
		// An ID lives in one partition; compacting is only a guard against a stray duplicate.
		best = slices.CompactFunc(best, func(a, b hit) bool { return a.id == b.id })
		best = best[:min(len(best), limit+1)]
	}
	if len(best) <= limit {
		return best, "", nil
	}
	best = best[:limit]
	return best, base64.RawURLEncoding.EncodeToString([]byte(best[limit-1].id)), nil
}

// metadataIndexes checks that the metadata lookup indexes and the records agree: every pair
// of every account and transfer record Verify read is in its index, and every index entry
// names a record that has its pair. Entries are written by the script that writes their
// record and never removed, so a record read earlier has all of its entries; an entry whose
// record Verify did not read (created after the records were read, or with steps that did
// not add up) is checked against its record read now.
func (v *verifier) metadataIndexes(ctx context.Context) error {
	ks := v.l.store.keys
	want := map[string]map[string]bool{} // index key → IDs
	expect := func(p int, kind, id string, md map[string]string) {
		for k, val := range md {
			key := ks.metadataIndex(p, kind, k, val)
			if want[key] == nil {
				want[key] = map[string]bool{}
			}
			want[key][id] = true
		}
	}
	for id, c := range v.cuts {
		expect(ks.partition(id), indexAccounts, id, c.acc.Metadata)
	}
	for id, f := range v.flows {
		// A transfer's record and its index entries are in its source's partition.
		expect(ks.partition(f.from), indexTransfers, id, f.metadata)
	}

	var mu sync.Mutex
	got := map[string][]string{}
	scan := func(ctx context.Context, c *redis.Client) error {
		// One pipeline of ZRANGEs per SCAN page: a value unique per record (an order ID) makes
		// one small index per record.
		var cursor uint64
		for {
			keys, next, err := c.Scan(ctx, cursor, v.l.cfg.Prefix+":{*}:md:*", 1000).Result()
			if err != nil {
				return err
			}
			// The pattern also matches other keys whose client-chosen parts contain "}:md:"
			// (an Idempotency-Key may): keep only the ledger's index keys.
			keys = slices.DeleteFunc(keys, func(k string) bool { _, _, ok := ks.parseMetadataIndex(k); return !ok })
			pipe := c.Pipeline()
			ranges := make([]*redis.StringSliceCmd, len(keys))
			for i, k := range keys {
				ranges[i] = pipe.ZRange(ctx, k, 0, -1)
			}
			if len(keys) > 0 {
				if _, err := pipe.Exec(ctx); err != nil {
					return err
				}
			}
			mu.Lock()
			for i, k := range keys {
				got[k] = ranges[i].Val() // SCAN may return a key twice: the same members
			}
			mu.Unlock()
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	if err := redisx.ForEachMaster(ctx, v.l.store.rdb, scan); err != nil {
		return storeErr(ctx, err)
	}

	for _, key := range slices.Sorted(maps.Keys(want)) {
		have := map[string]bool{}
		for _, id := range got[key] {
			have[id] = true
		}
		for _, id := range slices.Sorted(maps.Keys(want[key])) {
			if !have[id] {
				v.problem(Problem{Kind: ProblemMetadataIndex, Detail: fmt.Sprintf("%s has metadata indexed under %s, but is not in that index", id, key)})
			}
		}
	}
	// Entries no record read named: records made after the scan read them, or strays. Their
	// records are read in pipelined batches.
	var extra []indexEntry
	for _, key := range slices.Sorted(maps.Keys(got)) {
		for _, id := range got[key] {
			if !want[key][id] {
				extra = append(extra, indexEntry{key, id})
			}
		}
	}
	for batch := range slices.Chunk(extra, transferRecordBatch) {
		ok, err := v.indexedRecords(ctx, batch)
		if err != nil {
			return err
		}
		for i, e := range batch {
			if !ok[i] {
				v.problem(Problem{Kind: ProblemMetadataIndex, Detail: fmt.Sprintf("index %s names %s, which has no record with that metadata", e.key, e.id)})
			}
		}
	}
	return nil
}

// indexEntry is one member (id) of a metadata index (key).
type indexEntry struct{ key, id string }

// indexedRecords reports, for each entry, whether the record it names exists, in the
// index's partition, with a metadata pair whose index is the entry's: one round trip.
func (v *verifier) indexedRecords(ctx context.Context, entries []indexEntry) ([]bool, error) {
	ks := v.l.store.keys
	type read struct {
		p    int
		kind string
		rec  *redis.MapStringStringCmd // nil: not an index key
	}
	reads := make([]read, len(entries))
	pipe := v.l.store.rdb.Pipeline()
	for i, e := range entries {
		p, kind, ok := ks.parseMetadataIndex(e.key)
		if !ok {
			continue
		}
		key := ks.transfer(p, e.id)
		if kind == indexAccounts {
			key = ks.snapshot(p, e.id)
		}
		reads[i] = read{p: p, kind: kind, rec: pipe.HGetAll(ctx, key)}
	}
	if _, err := pipe.Exec(ctx); err != nil { // an empty pipeline sends nothing and answers nil
		return nil, storeErr(ctx, err)
	}
	out := make([]bool, len(entries))
	for i, e := range entries {
		r := reads[i]
		if r.rec == nil {
			continue
		}
		var md map[string]string
		if r.kind == indexAccounts {
			acc, err := parseSnapshot(e.id, r.rec.Val(), v.now)
			if err != nil || !acc.exists() {
				continue
			}
			md = acc.Metadata
		} else {
			t, err := parseTransfer(e.id, r.rec.Val())
			if err != nil {
				continue
			}
			md = t.Metadata
		}
		for k, val := range md {
			if ks.metadataIndex(r.p, r.kind, k, val) == e.key {
				out[i] = true
				break
			}
		}
	}
	return out, nil
}
