package ledger

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

//go:embed commit.lua
var commitLua string

// Snapshot hash fields.
const (
	fieldVersion       = "v"
	fieldStatus        = "st"
	fieldAllowNegative = "an"
	fieldMetadata      = "md"
	fieldLast          = "t" // Account.last: Unix ns of the last event
	prefixPosted       = "b:"
	prefixHold         = "H:"  // a pending hold: "<currency> <amount> <expires at> <created at>" (Unix ms)
	prefixOverdraft    = "od:" // an overdraft limit of a currency: "<limit>" (> 0)
	prefixAlert        = "A:"  // a threshold alert: "<currency> <below|above> <threshold>"
)

// store is the Redis side of the ledger: one read and one commit script per attempt.
type store struct {
	rdb    redis.UniversalClient
	keys   keyspace
	commit *redis.Script
	single bool // a single Redis, not Cluster: one script may touch keys of several partitions
}

func newStore(rdb redis.UniversalClient, keys keyspace) *store {
	_, single := rdb.(*redis.Client) // a Cluster client, or any other, is not assumed single
	return &store{rdb: rdb, keys: keys, commit: redis.NewScript(commitLua), single: single}
}

// record is a stored response of an earlier request (client key, internal token or
// resource record).
type record struct {
	found       bool
	fingerprint string
	body        []byte
	refused     bool // body is a recorded refusal (see rejection.go)
	attempt     int  // an internal token's: which of its request's commits wrote it (request.tokenBodies)
}

// recordRef names the record a request writes: its key and kind ("idem" for a client's
// Idempotency-Key, "op" for an internal token, "mark" for a resource record kept for good).
// keepsRefusals is set for records named by a client (its Idempotency-Key, a hold's or
// transfer's ID): a refusal is recorded under them too, kept as long as a client key.
//
// An internal token's record is field (the random token) of the hash key (keyspace.ops:
// the partition's tokens of a tenth of a second), its value the number of the request's
// commit that wrote it. Only its own request ever reads a token, after a commit's outcome
// was lost, and that request keeps the response of each commit it sent
// (request.tokenBodies): the number tells which one stands. Every keyless
// write carries one, so a commit writes all of its tokens in one HSET, with one PEXPIRE
// that keeps the hash for OperationTokenTTL after its last write. A token is random and
// new: until a commit carrying it has been sent once it is neither read nor checked (kind
// "op-new", see request.recordKind).
type recordRef struct {
	key           string
	field         string // an internal token's field of key; "" for the other kinds
	kind          string
	keepsRefusals bool
}

// id identifies the record: requests with the same id share it.
func (r recordRef) id() string {
	if r.field == "" {
		return r.key
	}
	return r.key + "\x00" + r.field
}

// snapshot is an account as read, with the names of the hash fields it was read from (to
// know which fields a commit must delete). The hold fields are not among them: the hash's
// holds are acc's, and a commit diffs those (holdSet.changedSince), so that the set stays
// the few fields most accounts share (snapCache.sets) however many holds an account has.
type snapshot struct {
	acc    *Account
	fields map[string]bool // every field of the hash except the hold:<id> ones
}

// read returns the snapshots of accounts and the records of refs, in one round trip,
// with balances settled for now.
func (s *store) read(ctx context.Context, accounts []string, refs []recordRef, now time.Time) (map[string]snapshot, []record, error) {
	snaps, recs, _, err := s.readProbed(ctx, accounts, refs, nil, nil, now)
	return snaps, recs, err
}

// readProbed is read that also tells which of the hold records probes exist (have an "id";
// see prober), read first, and does the claims and destination reads of preps (see
// transferPrep), setting their results.
func (s *store) readProbed(ctx context.Context, accounts []string, refs []recordRef, probes []string, preps []*transferPrep, now time.Time) (map[string]snapshot, []record, map[string]bool, error) {
	pipe := s.rdb.Pipeline()
	probed := make([]*redis.BoolCmd, len(probes))
	for i, k := range probes {
		probed[i] = pipe.HExists(ctx, k, "id")
	}
	took := make([]func(), len(preps))
	for i, pr := range preps {
		took[i] = pr.queue(ctx, pipe, s.keys, now)
	}
	snaps := make([]*redis.MapStringStringCmd, len(accounts))
	for i, id := range accounts {
		snaps[i] = pipe.HGetAll(ctx, s.keys.snapshot(s.keys.partition(id), id))
	}
	recs := make([]*redis.MapStringStringCmd, len(refs))
	ops := make([]*redis.StringCmd, len(refs))
	for i, r := range refs {
		if r.kind == "op" {
			ops[i] = pipe.HGet(ctx, r.key, r.field) // a field of a hash of tokens: see recordRef
		} else {
			recs[i] = pipe.HGetAll(ctx, r.key)
		}
	}
	if cmds, err := pipe.Exec(ctx); err != nil {
		// A missing token is a nil reply, and Exec reports the first error of any command:
		// look at each.
		for _, c := range cmds {
			if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
				return nil, nil, nil, storeErr(ctx, err)
			}
		}
	}
	out := make(map[string]snapshot, len(accounts))
	for i, id := range accounts {
		snap, err := newSnapshot(id, snaps[i].Val(), now)
		if err != nil {
			return nil, nil, nil, err
		}
		out[id] = snap
	}
	found := make([]record, len(refs))
	for i, c := range recs {
		if c == nil {
			if v, err := ops[i].Result(); err == nil {
				n, err := strconv.Atoi(v)
				if err != nil || n < 0 {
					return nil, nil, nil, fmt.Errorf("%w: corrupt operation record %s %s", ErrInternal, refs[i].key, refs[i].field)
				}
				found[i] = record{found: true, attempt: n}
			}
			continue
		}
		v := c.Val()
		if fp, ok := v["fp"]; ok {
			found[i] = record{found: true, fingerprint: fp, body: []byte(v["body"]), refused: v["refused"] == "1"}
		}
	}
	for _, take := range took {
		take()
	}
	var placed map[string]bool
	for i, c := range probed {
		if c.Val() {
			if placed == nil {
				placed = make(map[string]bool, len(probes))
			}
			placed[probes[i]] = true
		}
	}
	return out, found, placed, nil
}

// newSnapshot parses the snapshot hash h of account id, with balances settled for now.
func newSnapshot(id string, h map[string]string, now time.Time) (snapshot, error) {
	acc, err := parseSnapshot(id, h, now)
	if err != nil {
		return snapshot{}, err
	}
	fields := make(map[string]bool, len(h))
	for f := range h {
		if !strings.HasPrefix(f, prefixHold) { // the holds are acc's (see snapshot)
			fields[f] = true
		}
	}
	return snapshot{acc: acc, fields: fields}, nil
}

// account returns the snapshot of one account (version 0 when it does not exist).
func (s *store) account(ctx context.Context, account string, now time.Time) (*Account, error) {
	snaps, _, err := s.read(ctx, []string{account}, nil, now)
	if err != nil {
		return nil, err
	}
	return snaps[account].acc, nil
}

func parseSnapshot(id string, h map[string]string, now time.Time) (*Account, error) {
	acc := &Account{ID: id, Balances: map[string]Balance{}}
	if len(h) == 0 {
		return acc, nil
	}
	corrupt := func(field string, err error) error {
		return fmt.Errorf("%w: corrupt snapshot of %s: %s: %w", ErrInternal, id, field, err)
	}
	var err error
	if acc.Version, err = strconv.ParseInt(h[fieldVersion], 10, 64); err != nil {
		return nil, corrupt(fieldVersion, err)
	}
	acc.Status = StatusOpen
	if h[fieldStatus] == StatusClosed {
		acc.Status = StatusClosed
	}
	acc.AllowNegative = h[fieldAllowNegative] == "1"
	if t, ok := h[fieldLast]; ok {
		if acc.last, err = strconv.ParseInt(t, 10, 64); err != nil {
			return nil, corrupt(fieldLast, err)
		}
	}
	if md := h[fieldMetadata]; md != "" {
		if err := json.Unmarshal([]byte(md), &acc.Metadata); err != nil {
			return nil, corrupt(fieldMetadata, err)
		}
	}
	var holds map[string]pendingHold
	for f, v := range h {
		switch {
		case strings.HasPrefix(f, prefixPosted):
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, corrupt(f, err)
			}
			b := acc.Balances[f[len(prefixPosted):]]
			b.Posted = n
			acc.Balances[f[len(prefixPosted):]] = b
		case strings.HasPrefix(f, prefixHold):
			ph, err := parseHoldField(v)
			if err != nil {
				return nil, corrupt(f, err)
			}
			if holds == nil {
				holds = map[string]pendingHold{}
			}
			holds[f[len(prefixHold):]] = ph
		case strings.HasPrefix(f, prefixOverdraft):
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, corrupt(f, err)
			}
			if acc.OverdraftLimit == nil {
				acc.OverdraftLimit = map[string]int64{}
			}
			acc.OverdraftLimit[f[len(prefixOverdraft):]] = n
		case strings.HasPrefix(f, prefixAlert):
			var cur, dir string
			var t int64
			if _, err := fmt.Sscanf(v, "%s %s %d", &cur, &dir, &t); err != nil {
				return nil, corrupt(f, err)
			}
			al := Alert{ID: f[len(prefixAlert):], Account: id, Currency: cur}
			switch dir {
			case AlertBelow:
				al.Below = &t
			case AlertAbove:
				al.Above = &t
			default:
				return nil, corrupt(f, fmt.Errorf("direction %q", dir))
			}
			if acc.alerts == nil {
				acc.alerts = map[string]Alert{}
			}
			acc.alerts[al.ID] = al
		}
	}
	acc.holds = newHoldSet(holds)
	acc.settle(now)
	return acc, nil
}

// holdFieldValue is the value of a pending hold's snapshot field: "<currency> <amount>
// <expires at> <created at>", times in Unix ms.
func holdFieldValue(h pendingHold) string {
	return fmt.Sprintf("%s %d %d %d", h.Currency, h.Amount, h.ExpiresAt.UnixMilli(), h.CreatedAt.UnixMilli())
}

// parseHoldField parses a pending hold's snapshot field (holdFieldValue). A read parses one
// per pending hold, so it does without fmt's scanning (~8× the time).
func parseHoldField(v string) (pendingHold, error) {
	parts := strings.Fields(v)
	if len(parts) != 4 {
		return pendingHold{}, fmt.Errorf("%d parts, want 4", len(parts))
	}
	var n [3]int64
	for i, p := range parts[1:] {
		var err error
		if n[i], err = strconv.ParseInt(p, 10, 64); err != nil {
			return pendingHold{}, err
		}
	}
	return pendingHold{Currency: parts[0], Amount: n[0], ExpiresAt: time.UnixMilli(n[1]).UTC(), CreatedAt: time.UnixMilli(n[2]).UTC()}, nil
}

// snapshotFields returns the hash fields (name, value, ...) that describe acc.
func snapshotFields(acc *Account) ([]any, error) {
	out, _, _, err := snapshotWrite(acc, snapshot{})
	return out, err
}

// snapshotWrite returns what a commit does to the snapshot hash so that it describes acc:
// the fields to set (name, value, ...), the fields to delete, and the names of the fields
// other than holds the hash then has. before is the snapshot the decision was made on, which
// the commit's version check makes sure is what the hash holds: a field the hash has whose
// value acc keeps is left alone, so a write costs what it changes, not what the account
// holds (an account's pending holds are a field each, and the holds the hash has are
// before's). With a zero before every field is set.
func snapshotWrite(acc *Account, before snapshot) (set, del []any, names map[string]bool, err error) {
	b := before.acc
	names = make(map[string]bool, max(len(before.fields), 4))
	set = make([]any, 0, 8)
	// kept reports whether field f of acc's snapshot stays as the hash has it: the hash
	// has f and same says acc encodes it as before does.
	kept := func(f string, same bool) bool {
		names[f] = true
		return same && before.fields[f]
	}
	if !kept(fieldVersion, b != nil && b.Version == acc.Version) {
		set = append(set, fieldVersion, strconv.FormatInt(acc.Version, 10))
	}
	if !kept(fieldAllowNegative, b != nil && b.AllowNegative == acc.AllowNegative) {
		set = append(set, fieldAllowNegative, boolString(acc.AllowNegative))
	}
	if !kept(fieldLast, b != nil && b.last == acc.last) {
		set = append(set, fieldLast, strconv.FormatInt(acc.last, 10))
	}
	if acc.closed() && !kept(fieldStatus, b != nil && b.closed()) {
		set = append(set, fieldStatus, StatusClosed)
	}
	if len(acc.Metadata) > 0 && !kept(fieldMetadata, b != nil && maps.Equal(b.Metadata, acc.Metadata)) {
		md, err := json.Marshal(acc.Metadata)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("ledger: encode metadata: %w", err)
		}
		set = append(set, fieldMetadata, string(md))
	}
	for _, c := range acc.currencies() {
		if !kept(prefixPosted+c, b != nil && b.Balances[c].Posted == acc.Balances[c].Posted) {
			set = append(set, prefixPosted+c, strconv.FormatInt(acc.Balances[c].Posted, 10))
		}
	}
	// A hold does not change once placed, only goes; changedSince compares its value all
	// the same, so a command that changed one could not leave the hash behind.
	var holdsBefore holdSet
	if b != nil {
		holdsBefore = b.holds
	}
	changed, removed := acc.holds.changedSince(holdsBefore)
	for _, id := range changed {
		h, _ := acc.holds.get(id)
		set = append(set, prefixHold+id, holdFieldValue(h))
	}
	for _, id := range removed {
		del = append(del, prefixHold+id)
	}
	for _, c := range slices.Sorted(maps.Keys(acc.OverdraftLimit)) {
		if !kept(prefixOverdraft+c, b != nil && b.OverdraftLimit[c] == acc.OverdraftLimit[c]) {
			set = append(set, prefixOverdraft+c, strconv.FormatInt(acc.OverdraftLimit[c], 10))
		}
	}
	for _, id := range slices.Sorted(maps.Keys(acc.alerts)) {
		al := acc.alerts[id]
		dir, t := al.direction()
		same := false
		if b != nil {
			if was, ok := b.alerts[id]; ok {
				wasDir, wasT := was.direction()
				same = was.Currency == al.Currency && wasDir == dir && wasT == t
			}
		}
		if !kept(prefixAlert+id, same) {
			set = append(set, prefixAlert+id, fmt.Sprintf("%s %s %d", al.Currency, dir, t))
		}
	}
	for _, f := range slices.Sorted(maps.Keys(before.fields)) {
		if !names[f] {
			del = append(del, f)
		}
	}
	return set, del, names, nil
}

func boolString(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// recordWrite is a response to remember under a record key: a success's body, or an
// encoded refusal (kind "refusal"). kind is what the commit script writes it as: the ref's
// kind, "op-new" or "refusal" (see commit.lua).
type recordWrite struct {
	slice       int
	ref         recordRef
	kind        string
	fingerprint string
	body        []byte
	attempt     int // an internal token's value: the index of body in request.tokenBodies
}

// write is one extra write of a commit (HSET, HDEL, ZADD or ZREM on a key of the
// partition): hold and transfer records, the hold expiry and pending transfer indexes. On a
// single Redis (store.single) a transfer's credit also marks the transfer record in the
// source's partition completed (transferCredit.Complete); on Cluster never.
type write struct {
	slice int
	cmd   string
	key   string
	args  []any
}

// guard is a key that must not exist for its slice to commit.
type guard struct {
	slice int
	key   string
}

// accountWrite is one account of a commit: the version its decision was made on, its
// state afterwards and the events between.
type accountWrite struct {
	slice  int
	before snapshot
	after  *Account
	events []Event
	// cached: before came from the snapshot cache, so the commit checks its last event time
	// besides its version.
	cached bool
}

// plan is everything one commit script call writes, all in one partition (but for the
// extra writes of a credit that completes its transfer on a single Redis). Its parts are
// grouped in slices numbered from 0: the parts of requests that share accounts. The script
// commits each slice whole or skips it when one of its accounts' versions moved.
type plan struct {
	partition int
	slices    int
	accounts  []accountWrite
	records   []recordWrite
	guards    []guard
	writes    []write
}

// commitOutcome is what the commit script answered. When neither existing nor taken is
// set, the slices not in skipped were committed.
type commitOutcome struct {
	skipped  map[int]bool // slices not committed because an account's version moved
	existing int          // index into the plan's records of one that already exists, or -1
	taken    int          // index into the plan's guards of a key that exists, or -1
	// fields holds, per account of the plan, the snapshot hash's fields after the commit
	// (nil for an account without events: its fields did not change).
	fields []map[string]bool
}

// write commits a plan in one script call.
func (s *store) write(ctx context.Context, pl plan, ttls [2]int64) (commitOutcome, error) {
	keys := []string{s.keys.outbox(pl.partition)}
	index := map[string]int{}
	key := func(k string) int {
		if i, ok := index[k]; ok {
			return i
		}
		keys = append(keys, k)
		index[k] = len(keys)
		return len(keys)
	}
	slices := max(pl.slices, 1)
	args := []any{len(pl.accounts), len(pl.records), len(pl.guards), len(pl.writes), ttls[0], ttls[1], slices}
	after := make([]map[string]bool, len(pl.accounts))
	for i, aw := range pl.accounts {
		id := aw.after.ID
		if p := s.keys.partition(id); p != pl.partition {
			return commitOutcome{}, fmt.Errorf("%w: account %s (partition %d) in a commit of partition %d", ErrInternal, id, p, pl.partition)
		}
		var fields []any
		var deleted []any
		if len(aw.events) > 0 {
			var err error
			if fields, deleted, after[i], err = snapshotWrite(aw.after, aw.before); err != nil {
				return commitOutcome{}, err
			}
		}
		last := ""
		if aw.cached && aw.before.acc.last != 0 {
			last = strconv.FormatInt(aw.before.acc.last, 10)
		}
		args = append(args, aw.slice+1, key(s.keys.snapshot(pl.partition, id)), key(s.keys.events(pl.partition, id)),
			aw.before.acc.Version, id, len(aw.events), len(fields)/2, len(deleted), last)
		for _, e := range aw.events {
			raw, err := e.appendJSON(make([]byte, 0, 256))
			if err != nil {
				return commitOutcome{}, fmt.Errorf("ledger: encode event: %w", err)
			}
			args = append(args, e.Version, e.Type, string(raw))
		}
		args = append(args, fields...)
		args = append(args, deleted...)
	}
	for _, r := range pl.records {
		if r.kind == "op" || r.kind == "op-new" {
			args = append(args, r.slice+1, key(r.ref.key), r.kind, r.ref.field, r.attempt)
			continue
		}
		args = append(args, r.slice+1, key(r.ref.key), r.kind, r.fingerprint, string(r.body))
	}
	for _, g := range pl.guards {
		args = append(args, g.slice+1, key(g.key))
	}
	for _, w := range pl.writes {
		args = append(args, w.slice+1, w.cmd, key(w.key), len(w.args))
		args = append(args, w.args...)
	}
	res, err := s.commit.Run(ctx, s.rdb, keys, args...).StringSlice()
	if err != nil {
		return commitOutcome{}, storeErr(ctx, err)
	}
	out := commitOutcome{existing: -1, taken: -1, fields: after}
	index1 := func() int { i, _ := strconv.Atoi(res[1]); return i - 1 }
	switch {
	case len(res) == 1 && res[0] == "OK":
	case len(res) == 1 && res[0] == "CONFLICT":
		out.skipped = make(map[int]bool, slices)
		for i := range slices {
			out.skipped[i] = true
		}
	case len(res) >= 2 && res[0] == "PARTIAL":
		out.skipped = make(map[int]bool, len(res)-1)
		for _, v := range res[1:] {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > slices {
				return commitOutcome{}, fmt.Errorf("%w: unexpected commit reply %q", ErrInternal, res)
			}
			out.skipped[n-1] = true
		}
	case len(res) == 2 && res[0] == "IDEM":
		out.existing = index1()
	case len(res) == 2 && res[0] == "TAKEN":
		out.taken = index1()
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
		e, err := decodeStreamEntry(m.Values)
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
// asked to write, a master without its replicas, too many clients, a busy script, a
// Redis at its maxmemory that refuses writes (OOM: keys expire and streams are trimmed).
var transientReplies = []string{"LOADING", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK", "READONLY", "MASTERDOWN", "MAXCLIENTS", "BUSY", "NOREPLICAS", "OOM"}

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
