package ledger

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/outbox"
)

//go:embed commit.lua
var commitLua string

// Snapshot hash fields.
const (
	fieldVersion       = "v"
	fieldAllowNegative = "an"
	fieldMetadata      = "md"
	prefixPosted       = "b:"
	prefixHeld         = "h:"
)

// store is the Redis side of the ledger: one read and one commit script per attempt.
type store struct {
	rdb    redis.UniversalClient
	keys   keyspace
	commit *redis.Script
}

// record is a stored response of an earlier request (client key or internal token).
type record struct {
	found       bool
	fingerprint string
	body        []byte
}

// recordRef names the record a request writes: its key and kind ("idem" or "op").
type recordRef struct {
	key  string
	kind string
}

// read returns the account snapshot and the records of refs, in one round trip.
func (s *store) read(ctx context.Context, account string, refs []recordRef) (*Account, []record, error) {
	p := s.keys.partition(account)
	pipe := s.rdb.Pipeline()
	snap := pipe.HGetAll(ctx, s.keys.snapshot(p, account))
	recs := make([]*redis.MapStringStringCmd, len(refs))
	for i, r := range refs {
		recs[i] = pipe.HGetAll(ctx, r.key)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, nil, storeErr(ctx, err)
	}
	acc, err := parseSnapshot(account, snap.Val())
	if err != nil {
		return nil, nil, err
	}
	out := make([]record, len(refs))
	for i, c := range recs {
		v := c.Val()
		if fp, ok := v["fp"]; ok {
			out[i] = record{found: true, fingerprint: fp, body: []byte(v["body"])}
		}
	}
	return acc, out, nil
}

// account returns the snapshot of one account (version 0 when it does not exist).
func (s *store) account(ctx context.Context, account string) (*Account, error) {
	acc, _, err := s.read(ctx, account, nil)
	return acc, err
}

func parseSnapshot(id string, h map[string]string) (*Account, error) {
	acc := &Account{ID: id, Balances: map[string]Balance{}}
	if len(h) == 0 {
		return acc, nil
	}
	var err error
	if acc.Version, err = strconv.ParseInt(h[fieldVersion], 10, 64); err != nil {
		return nil, fmt.Errorf("ledger: corrupt snapshot of %s: version: %w", id, err)
	}
	acc.AllowNegative = h[fieldAllowNegative] == "1"
	if md := h[fieldMetadata]; md != "" {
		if err := json.Unmarshal([]byte(md), &acc.Metadata); err != nil {
			return nil, fmt.Errorf("ledger: corrupt snapshot of %s: metadata: %w", id, err)
		}
	}
	for f, v := range h {
		var cur string
		held := false
		switch {
		case strings.HasPrefix(f, prefixPosted):
			cur = f[len(prefixPosted):]
		case strings.HasPrefix(f, prefixHeld):
			cur, held = f[len(prefixHeld):], true
		default:
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("ledger: corrupt snapshot of %s: %s: %w", id, f, err)
		}
		b := acc.Balances[cur]
		if held {
			b.Held = n
		} else {
			b.Posted = n
		}
		acc.Balances[cur] = b
	}
	for c, b := range acc.Balances {
		b.Available = b.Posted - b.Held
		acc.Balances[c] = b
	}
	return acc, nil
}

// snapshotFields returns the hash fields (name, value, ...) that describe acc.
func snapshotFields(acc *Account) ([]any, error) {
	out := []any{fieldVersion, strconv.FormatInt(acc.Version, 10), fieldAllowNegative, boolString(acc.AllowNegative)}
	if len(acc.Metadata) > 0 {
		md, err := json.Marshal(acc.Metadata)
		if err != nil {
			return nil, fmt.Errorf("ledger: encode metadata: %w", err)
		}
		out = append(out, fieldMetadata, string(md))
	}
	for _, c := range acc.currencies() {
		b := acc.Balances[c]
		out = append(out, prefixPosted+c, strconv.FormatInt(b.Posted, 10), prefixHeld+c, strconv.FormatInt(b.Held, 10))
	}
	return out, nil
}

func boolString(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// recordWrite is a response to remember under a record key.
type recordWrite struct {
	ref         recordRef
	fingerprint string
	body        []byte
}

// commitOutcome is what the commit script answered.
type commitOutcome struct {
	ok       bool
	conflict bool  // the account's version moved
	current  int64 // the version found on conflict
	existing int   // index into the batch's records of one that already exists, or -1
}

// write commits events, the final snapshot and the records in one script call.
func (s *store) write(ctx context.Context, expected int64, final *Account, events []Event, recs []recordWrite, ttls [2]int64) (commitOutcome, error) {
	p := s.keys.partition(final.ID)
	keys := make([]string, 0, 3+len(recs))
	keys = append(keys, s.keys.snapshot(p, final.ID), s.keys.events(p, final.ID), s.keys.outbox(p))
	fields, err := snapshotFields(final)
	if err != nil {
		return commitOutcome{}, err
	}
	args := make([]any, 0, 6+3*len(events)+len(fields)+3*len(recs))
	args = append(args, expected, final.ID, len(events), len(fields)/2, ttls[0], ttls[1])
	for _, e := range events {
		raw, err := json.Marshal(e)
		if err != nil {
			return commitOutcome{}, fmt.Errorf("ledger: encode event: %w", err)
		}
		args = append(args, e.Version, e.Type, string(raw))
	}
	args = append(args, fields...)
	for _, r := range recs {
		keys = append(keys, r.ref.key)
		args = append(args, r.ref.kind, r.fingerprint, string(r.body))
	}
	res, err := s.commit.Run(ctx, s.rdb, keys, args...).StringSlice()
	if err != nil {
		return commitOutcome{}, storeErr(ctx, err)
	}
	out := commitOutcome{existing: -1}
	switch {
	case len(res) == 1 && res[0] == "OK":
		out.ok = true
	case len(res) == 2 && res[0] == "CONFLICT":
		out.conflict = true
		out.current, _ = strconv.ParseInt(res[1], 10, 64)
	case len(res) == 2 && res[0] == "IDEM":
		i, _ := strconv.Atoi(res[1])
		out.existing = i - 1
	default:
		return commitOutcome{}, fmt.Errorf("ledger: unexpected commit reply %q", res)
	}
	return out, nil
}

// page returns up to limit events of an account with versions greater than after, whether
// more follow, and whether the account exists — one round trip, from one consistent moment.
func (s *store) page(ctx context.Context, account string, after int64, limit int) (exists bool, events []Event, more bool, err error) {
	p := s.keys.partition(account)
	pipe := s.rdb.Pipeline()
	opened := pipe.HExists(ctx, s.keys.snapshot(p, account), fieldVersion)
	entries := pipe.XRangeN(ctx, s.keys.events(p, account), strconv.FormatInt(after+1, 10)+"-0", "+", int64(limit)+1)
	if _, err := pipe.Exec(ctx); err != nil {
		return false, nil, false, storeErr(ctx, err)
	}
	msgs := entries.Val()
	if len(msgs) > limit {
		msgs, more = msgs[:limit], true
	}
	events = make([]Event, 0, len(msgs))
	for _, m := range msgs {
		e, err := outbox.DecodeEntry(m.Values)
		if err != nil {
			return false, nil, false, fmt.Errorf("ledger: stream of %s entry %s: %w", account, m.ID, err)
		}
		events = append(events, e)
	}
	return opened.Val(), events, more, nil
}

// storeErr returns ctx's error when the context ended, else err wrapped with
// ErrStoreUnavailable (a Redis that could not be reached or answered with an error).
func storeErr(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrStoreUnavailable, err)
}
