package ledger

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

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
		return nil, fmt.Errorf("%w: corrupt snapshot of %s: version: %w", ErrInternal, id, err)
	}
	acc.AllowNegative = h[fieldAllowNegative] == "1"
	if md := h[fieldMetadata]; md != "" {
		if err := json.Unmarshal([]byte(md), &acc.Metadata); err != nil {
			return nil, fmt.Errorf("%w: corrupt snapshot of %s: metadata: %w", ErrInternal, id, err)
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
			return nil, fmt.Errorf("%w: corrupt snapshot of %s: %s: %w", ErrInternal, id, f, err)
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
	case len(res) == 2 && res[0] == "DUPLICATE":
		return commitOutcome{}, fmt.Errorf("%w: commit refused: record %s named twice in one call", ErrInternal, res[1])
	default:
		return commitOutcome{}, fmt.Errorf("%w: unexpected commit reply %q", ErrInternal, res)
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

// storeErr classifies an error of a Redis call. It returns ctx's error when the context
// ended; err wrapped with ErrStoreUnavailable when Redis could not be reached or answered
// with a transient reply (see Transient); and err wrapped with ErrInternal otherwise — a
// script error or an unexpected reply is a bug, not an outage, and is not retried.
func storeErr(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if isCtxErr(err) {
		return err
	}
	if Transient(err) {
		return fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	return fmt.Errorf("%w: redis: %w", ErrInternal, err)
}

// transientReplies are the prefixes of Redis error replies that say "not now" rather than
// "never": a node loading its data set, a cluster resharding or failing over, a replica
// asked to write, a master without its replicas, too many clients, a busy script.
var transientReplies = []string{"LOADING", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK", "READONLY", "MASTERDOWN", "MAXCLIENTS", "BUSY", "NOREPLICAS"}

// Transient reports whether err is a failure worth retrying: a connection error, a timeout,
// a closed or exhausted client pool, or one of Redis's transient replies (LOADING,
// TRYAGAIN, CLUSTERDOWN, MOVED/ASK, READONLY, ...). Script errors and other replies are not.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		for _, p := range transientReplies {
			if redis.HasErrorPrefix(rerr, p) {
				return true
			}
		}
		return false
	}
	var netErr net.Error
	return errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, redis.ErrClosed) || errors.Is(err, redis.ErrPoolTimeout) ||
		errors.Is(err, os.ErrDeadlineExceeded)
}
