package ledger

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"runtime/debug"
	"slices"
	"sort"

	"github.com/tally-ledger/tally/internal/backoff"
)

// request is one write waiting for its result.
type request struct {
	ctx  context.Context
	cmd  command
	ref  recordRef
	fp   string
	sent bool // a commit carrying this request's record went to Redis (see recordKind)
	// tokenBodies are the responses of the commits decided with this request's internal
	// token, in order. The token's value in Redis is the index of the one that wrote it:
	// after a lost reply the request answers with that commit's response.
	tokenBodies [][]byte
	// pre holds snapshots of the command's accounts the caller read before: the first
	// attempt decides on them instead of reading them and the request's record, unless
	// another request of the batch that brought none touches the account (see prereads);
	// the commit checks their versions and the record's absence like any read's. Later
	// attempts read.
	pre  map[string]snapshot
	lead chan struct{} // receives when this request becomes its partition's leader
	done chan struct{} // closed when receipt/err are set

	receipt Receipt
	err     error
}

// finish sets the request's outcome and wakes its caller. Only the goroutine that leads the
// request's batch calls it; a request already finished keeps its first outcome.
func (r *request) finish(rc Receipt, err error) {
	select {
	case <-r.done:
		return
	default:
	}
	r.receipt, r.err = rc, err
	close(r.done)
}

// recordKind is the kind r's record is read and written as: an internal token never sent in
// a commit cannot exist in Redis yet, so it is "op-new" — not read, not checked.
func (r *request) recordKind() string {
	if r.ref.kind == "op" && !r.sent {
		return "op-new"
	}
	return r.ref.kind
}

// errRetry means the attempt changed nothing and should be repeated after a re-read.
var errRetry = errors.New("ledger: retry")

// submit runs one command through the write path: alone, or in its partition's group commit.
// The request's record is the client's Idempotency-Key (which keeps a refusal too), or an
// internal token.
func (l *Ledger) submit(ctx context.Context, cmd command, opts WriteOptions) (Receipt, error) {
	account := cmd.accounts()[0]
	p := l.store.keys.partition(account)
	ref := recordRef{key: l.store.keys.ops(p, l.cfg.Clock()), field: newToken(), kind: "op"}
	if opts.IdempotencyKey != "" {
		if err := ValidateIdempotencyKey(opts.IdempotencyKey); err != nil {
			return Receipt{}, err
		}
		ref = recordRef{key: l.store.keys.idem(p, account, opts.IdempotencyKey), kind: "idem", keepsRefusals: true}
	}
	return l.submitRef(ctx, cmd, ref, fingerprint(cmd))
}

// submitRef runs cmd with the given record: a resource record (hold, transfer, transfer
// step; kind "mark") makes the resource's ID its idempotency key.
func (l *Ledger) submitRef(ctx context.Context, cmd command, ref recordRef, fp string) (Receipt, error) {
	return l.submitPre(ctx, cmd, ref, fp, nil)
}

// submitPre is submitRef with snapshots of cmd's accounts already read (see request.pre).
func (l *Ledger) submitPre(ctx context.Context, cmd command, ref recordRef, fp string, pre map[string]snapshot) (Receipt, error) {
	account := cmd.accounts()[0]
	req := &request{ctx: ctx, cmd: cmd, fp: fp, ref: ref, pre: pre, lead: make(chan struct{}, 1), done: make(chan struct{})}
	if !l.admit(account) {
		return Receipt{}, ErrOverloaded
	}
	defer l.leave(account)
	if l.cfg.DisableGroupCommit {
		l.execute(ctx, []*request{req}, nil)
		return req.receipt, req.err
	}
	return l.enqueue(ctx, l.store.keys.partition(account), req)
}

// admit counts a request in for its account, or reports false when MaxQueue requests of
// the account are already in this process (waiting or being committed).
func (l *Ledger) admit(account string) bool {
	a := &l.admission
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inflight[account] >= l.cfg.MaxQueue {
		l.stats.overloaded.Add(1)
		return false
	}
	a.inflight[account]++
	return true
}

// leave counts a request of account out.
func (l *Ledger) leave(account string) {
	a := &l.admission
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inflight[account]--; a.inflight[account] <= 0 {
		delete(a.inflight, account)
	}
}

// enqueue adds req to its partition's queue. The first request of an idle partition becomes
// the leader: it commits everything that waits (up to MaxBatch requests, of any accounts of
// the partition) in one read round trip and one script call, then hands leadership to the
// next waiting request. Others wait for their result or for leadership. Requests are taken
// in arrival order and decided in that order, so each account's writes keep their order.
func (l *Ledger) enqueue(ctx context.Context, p int, req *request) (Receipt, error) {
	q := &l.queue
	q.mu.Lock()
	aq, busy := q.partitions[p]
	if !busy {
		aq = &partitionQueue{}
		q.partitions[p] = aq
		q.mu.Unlock()
		l.lead(p, aq, req)
		return req.receipt, req.err
	}
	aq.waiting = append(aq.waiting, req)
	q.mu.Unlock()

	select {
	case <-req.done:
		return req.receipt, req.err
	case <-req.lead:
		l.lead(p, aq, req)
		return req.receipt, req.err
	case <-ctx.Done():
	}
	// Cancelled while waiting: leave the queue if still in it; otherwise a leader has taken
	// this request (or handed it leadership) and the outcome must be seen through.
	q.mu.Lock()
	for i, w := range aq.waiting {
		if w == req {
			aq.waiting = append(aq.waiting[:i], aq.waiting[i+1:]...)
			q.mu.Unlock()
			return Receipt{}, ctx.Err()
		}
	}
	q.mu.Unlock()
	select {
	case <-req.done:
	case <-req.lead:
		l.lead(p, aq, req)
	}
	return req.receipt, req.err
}

// lead commits first and the requests waiting behind it, then passes leadership on. The
// hand-off is deferred, so that nothing — not even a panic that escaped execute — leaves the
// partition's queue without a leader while requests wait in it.
func (l *Ledger) lead(p int, aq *partitionQueue, first *request) {
	q := &l.queue
	defer func() {
		q.mu.Lock()
		if len(aq.waiting) > 0 {
			next := aq.waiting[0]
			aq.waiting = aq.waiting[1:]
			next.lead <- struct{}{}
		} else {
			delete(q.partitions, p)
		}
		q.mu.Unlock()
	}()
	batch := append([]*request{first}, l.absorb(aq, nil, l.cfg.MaxBatch-1)...)

	// The batch runs for several callers, so it is bounded by its own timeout rather than
	// by the leader's context.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(first.ctx), l.cfg.BatchTimeout)
	defer cancel()
	l.execute(ctx, batch, aq)
}

// execute runs read → decide → commit for a batch of requests of one partition, retrying on
// version conflicts and store errors, and finishes every request of the batch. With the
// partition's queue (aq, nil without group commit), requests that arrived since the batch
// was formed join it where they cost no extra round: once its leases are held (lock mode:
// those of the accounts already leased), and before a retry after a conflict (optimistic
// mode), which reads again anyway. So a batch that waited for a lease, or lost a race to
// another process, carries what queued meanwhile instead of leaving it for a batch that
// waits again.
//
// A panic while deciding or committing fails the whole batch with a *PanicError (every
// request the batch had not finished yet), so no caller waits forever.
func (l *Ledger) execute(ctx context.Context, batch []*request, aq *partitionQueue) {
	all := batch // every request the batch carries, those that joined it too
	defer func() {
		if v := recover(); v != nil {
			err := &PanicError{Value: v, Stack: debug.Stack()}
			for _, r := range all {
				r.finish(Receipt{}, err)
			}
		}
	}()
	pending := batch
	var lastErr error
	// join takes in requests that queued since, unless a store error sent the batch back:
	// during an outage they keep their own batch, with every retry still ahead of them.
	join := func(held []string) {
		if aq == nil || (lastErr != nil && !errors.Is(lastErr, errRetry)) {
			return
		}
		if more := l.absorb(aq, held, l.cfg.MaxBatch-len(pending)); len(more) > 0 {
			l.stats.joined.Add(int64(len(more)))
			pending = slices.Concat(pending, more)
			all = slices.Concat(all, more)
		}
	}
	for attempt := 0; attempt <= l.cfg.MaxRetries; attempt++ {
		if attempt > 0 {
			l.stats.retries.Add(1)
			if err := l.backoff(ctx, attempt, aq != nil); err != nil {
				lastErr = err
				break
			}
		}
		// run is the attempt, first on the snapshot cache and, when that was stale, once
		// more at once on a fresh read: no backoff, not counted as a retry, and (like a
		// retry) with the requests that queued meanwhile joining.
		run := func(ctx context.Context, held []string) error {
			for cache := true; ; cache = false {
				if l.cfg.Mode == ModeLock || attempt > 0 || !cache {
					join(held)
				}
				var stale bool
				var err error
				if pending, stale, err = l.attempt(ctx, pending, cache); !stale || !cache {
					return err
				}
			}
		}
		var err error
		if l.cfg.Mode == ModeLock {
			held := touched(pending)
			err = l.withLeases(ctx, held, func(ctx context.Context) error { return run(ctx, held) })
		} else {
			err = run(ctx, nil)
		}
		if err == nil {
			return
		}
		lastErr = err
		if isCtxErr(err) || errors.Is(err, ErrLockUnavailable) || errors.Is(err, ErrInternal) {
			break // only conflicts and outages are worth another attempt
		}
	}
	if errors.Is(lastErr, errRetry) {
		lastErr = ErrVersionConflict
	}
	for _, r := range pending {
		r.finish(Receipt{}, lastErr)
	}
}

// absorb takes out of aq's queue, for a batch, up to room waiting requests in arrival order:
// those whose accounts are all in held (sorted; nil: any account of the partition), except
// a request of an account whose earlier request stays behind — each account's writes keep
// their order. A waiting request whose caller gave up is finished on the way. lead forms a
// batch with it, execute adds to one under way.
func (l *Ledger) absorb(aq *partitionQueue, held []string, room int) []*request {
	q := &l.queue
	q.mu.Lock()
	defer q.mu.Unlock()
	var (
		took    []*request
		blocked map[string]bool
	)
	joins := func(r *request) bool {
		for _, id := range r.cmd.accounts() {
			if blocked[id] {
				return false
			}
			if held != nil {
				if _, ok := slices.BinarySearch(held, id); !ok {
					return false
				}
			}
		}
		return true
	}
	keep := aq.waiting[:0]
	for _, r := range aq.waiting {
		switch {
		case len(took) < room && r.ctx.Err() != nil:
			r.finish(Receipt{}, r.ctx.Err())
		case len(took) < room && joins(r):
			took = append(took, r)
		default:
			if blocked == nil {
				blocked = map[string]bool{}
			}
			for _, id := range r.cmd.accounts() {
				blocked[id] = true
			}
			keep = append(keep, r)
		}
	}
	clear(aq.waiting[len(keep):])
	aq.waiting = keep
	return took
}

// touched returns every account the requests name, sorted: the order leases are taken in,
// so that two batches sharing accounts never wait for each other in a cycle.
func touched(reqs []*request) []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range reqs {
		for _, id := range r.cmd.accounts() {
			if !seen[id] {
				seen[id] = true
				out = append(out, id)
			}
		}
	}
	sort.Strings(out)
	return out
}

// withLeases runs fn under the leases of accounts (sorted). A Locker that can take several
// leases at once (MultiLocker) gets them all in one call; otherwise they are taken one
// after another, in order. When a lease could not be taken nothing ran, and the error wraps
// ErrLockUnavailable. When one was lost while fn ran, the commit may or may not have
// happened: the error wraps errRetry so that the next attempt's read (every request carries
// a record) settles it.
func (l *Ledger) withLeases(ctx context.Context, accounts []string, fn func(ctx context.Context) error) error {
	keys := make([]string, len(accounts))
	for i, id := range accounts {
		keys[i] = "acct:" + id
	}
	var fnErr error
	ran := false
	run := func(ctx context.Context) error {
		ran = true
		fnErr = fn(ctx)
		return fnErr
	}
	var err error
	if m, ok := l.cfg.Locker.(MultiLocker); ok && len(keys) > 1 {
		err = m.DoAll(ctx, keys, run)
	} else {
		err = nest(ctx, l.cfg.Locker, keys, run)
	}
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case ran && fnErr != nil && !isCtxErr(fnErr) && errors.Is(err, fnErr):
		return err // fn's own outcome (conflict, store error)
	case ran:
		l.stats.lockFailures.Add(1)
		return fmt.Errorf("%w: lease lost: %w", errRetry, err)
	default:
		l.stats.lockFailures.Add(1)
		return fmt.Errorf("%w: %w", ErrLockUnavailable, err)
	}
}

// nest runs fn under the leases of keys, taken one after another in their order.
func nest(ctx context.Context, lk Locker, keys []string, fn func(ctx context.Context) error) error {
	if len(keys) == 1 {
		return lk.Do(ctx, keys[0], fn)
	}
	return lk.Do(ctx, keys[0], func(ctx context.Context) error {
		return nest(ctx, lk, keys[1:], fn)
	})
}

func isCtxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// attempt does one read → decide → commit for the pending requests. It finishes the
// requests it settles and returns those still pending with errRetry (or a store error), or
// nil when all are settled.
//
// With cache set it decides on the snapshot cache where it can. stale then reports that
// every request it sends back (with errRetry) was decided on a cached snapshot: they need a
// fresh read, not a backoff.
func (l *Ledger) attempt(ctx context.Context, pending []*request, cache bool) (rest []*request, stale bool, err error) {
	if len(pending) == 0 {
		return nil, false, nil
	}
	accounts := touched(pending)
	// The records to read: every client-named one (another request may have written it),
	// and an internal token only once a commit carrying it was sent (its outcome unknown).
	// A request that brought snapshots (request.pre) decides on them without reading its
	// record: it counts as absent, the commit refuses one that exists (out.existing) and
	// the next attempt reads.
	refs := make([]recordRef, 0, len(pending))
	at := make([]int, len(pending)) // index into refs, or -1
	for i, r := range pending {
		if r.recordKind() == "op-new" || r.pre != nil {
			at[i] = -1
			continue
		}
		at[i] = len(refs)
		refs = append(refs, r.ref)
	}
	var (
		probes []string
		preps  []*transferPrep
	)
	for _, r := range pending {
		if p, ok := r.cmd.(prober); ok {
			probes = append(probes, p.probes(l.store.keys)...)
		}
		if p, ok := r.cmd.(preparer); ok && p.prepare() != nil {
			preps = append(preps, p.prepare())
		}
	}
	now := l.cfg.Clock()
	part := l.store.keys.partition(accounts[0])
	pre, unread := prereads(pending, accounts)
	// Accounts this process committed last need no read (see snapCache): the commit checks
	// their versions like any read's, and a refusal decided on them is recorded under that
	// check or decided again (unchecked). Records, probes and transfer reads are still read:
	// a round trip then, but without the snapshots, which for an account with thousands of
	// pending holds are most of what a read would carry.
	var cached map[string]snapshot
	if cache {
		if cached = l.snaps.take(part, unread, now); cached != nil {
			if pre == nil {
				pre = make(map[string]snapshot, len(cached))
			}
			maps.Copy(pre, cached)
			unread = nil
			l.stats.cached.Add(1)
		}
	}
	snaps := pre // when nothing else is to be read: no round trip
	var (
		recs   []record
		placed map[string]bool
	)
	if len(unread) > 0 || len(refs) > 0 || len(probes) > 0 || len(preps) > 0 {
		var err error
		if snaps, recs, placed, err = l.store.readProbed(ctx, unread, refs, probes, preps, now); err != nil {
			return pending, false, err
		}
		maps.Copy(snaps, pre)
		if len(pre) > len(cached) {
			l.stats.mixedPrereads.Add(1)
		}
	}
	if len(pre) > len(cached) {
		l.stats.prereads.Add(1)
	}
	for _, r := range pending {
		r.pre = nil // for the first attempt only
	}

	// Requests already answered by a record are settled without deciding anything.
	live := pending[:0:0]
	for i, r := range pending {
		var rec record
		if at[i] >= 0 {
			rec = recs[at[i]]
		}
		switch {
		case !rec.found:
			live = append(live, r)
		case r.ref.kind == "op":
			if rec.attempt >= len(r.tokenBodies) {
				r.finish(Receipt{}, fmt.Errorf("%w: operation record %s names commit %d of %d", ErrInternal, r.ref.field, rec.attempt, len(r.tokenBodies)))
				continue
			}
			l.stats.replays.Add(1)
			r.finish(Receipt{Body: r.tokenBodies[rec.attempt]}, nil)
		case rec.fingerprint != r.fp:
			r.finish(Receipt{}, ErrIdempotencyKeyReused)
		case rec.refused:
			l.stats.replays.Add(1)
			r.finish(Receipt{}, decodeRefusal(rec.body))
		default:
			l.stats.replays.Add(1)
			r.finish(Receipt{Body: rec.body, Replayed: true}, nil)
		}
	}

	work := make(map[string]*Account, len(snaps))
	for id, s := range snaps {
		work[id] = s.acc.clone()
	}
	d := newDecision(l.store.keys, now, l.cfg.IdempotencyTTL, work)
	d.placed = placed
	// accepted holds the requests that write a record: those decided to succeed, and those
	// refused whose record keeps refusals (refusals[i] set; see rejection.go).
	var (
		accepted   []*request
		refusals   []error       // accepted[i]'s recorded refusal, or nil for a success
		records    []recordWrite // accepted[i]'s record
		bodies     [][]byte
		rejected   []*request // refused without a record
		rejections []error
		collided   []int         // per rejected request: the accepted one whose record it reused, or -1
		guardOwner []int         // per guard of d: index into accepted
		writeOwner []int         // per write of d: index into accepted
		tr         []transitions // accepted[i]'s transitions, for the metrics
	)
	// Requests that share a record collapse: the first one to claim the record decides; a
	// later one with the same fingerprint follows it (same response or refusal, replayed,
	// applied once), one with another fingerprint is a reuse of the key. A refusal without
	// a record (a keyless request's) claims nothing, as it would alone.
	claimed := map[string]int{} // record (recordRef.id) → index into accepted
	type follower struct {
		r  *request
		of int
	}
	var followers []follower
	groups := newSliceSet() // accounts an accepted command read, grouped: their versions are checked
	for _, r := range live {
		if i, ok := claimed[r.ref.id()]; ok {
			if accepted[i].fp == r.fp {
				followers = append(followers, follower{r, i})
			} else {
				rejected, rejections = append(rejected, r), append(rejections, ErrIdempotencyKeyReused)
				collided = append(collided, i)
			}
			continue
		}
		f := d.fork(r.cmd.accounts())
		body, err := r.cmd.decide(f)
		if err == nil {
			err = f.emitAlerts(d) // the one place alerts fire: after the command's own events
		}
		var raw []byte
		if err == nil {
			if raw, err = encodeBody(body); err != nil {
				err = fmt.Errorf("%w: encode response: %w", ErrInternal, err)
			}
		}
		if err != nil {
			if rec, ok := encodeRefusal(err); ok && r.ref.keepsRefusals {
				// Recorded with the version check of what it read, so that it stands only
				// if it was decided on the current state.
				groups.join(r.cmd.accounts())
				records = append(records, recordWrite{ref: r.ref, kind: "refusal", fingerprint: r.fp, body: rec})
				claimed[r.ref.id()] = len(accepted)
				accepted, refusals, bodies = append(accepted, r), append(refusals, err), append(bodies, nil)
				tr = append(tr, transitions{})
				continue
			}
			rejected, rejections = append(rejected, r), append(rejections, err)
			collided = append(collided, -1)
			continue
		}
		d.merge(f)
		for range f.guards {
			guardOwner = append(guardOwner, len(accepted))
		}
		for range f.writes {
			writeOwner = append(writeOwner, len(accepted))
		}
		groups.join(r.cmd.accounts())
		rw := recordWrite{ref: r.ref, kind: r.recordKind(), fingerprint: r.fp, body: raw}
		if r.ref.kind == "op" {
			rw.attempt = len(r.tokenBodies)
			r.tokenBodies = append(r.tokenBodies, raw)
		}
		records = append(records, rw)
		claimed[r.ref.id()] = len(accepted)
		accepted, refusals, bodies = append(accepted, r), append(refusals, nil), append(bodies, raw)
		tr = append(tr, f.tr)
	}
	// A refusal without a record is final without a version check: one decided on a snapshot
	// this attempt did not read (cached, or brought by its request) stands only if that
	// account committed in this call (committed; nil: none did); otherwise it is decided
	// again on a fresh read.
	unchecked := func(r *request, committed func(id string) bool) bool {
		for _, id := range r.cmd.accounts() {
			if _, ok := pre[id]; ok && (committed == nil || !committed(id)) {
				return true
			}
		}
		return false
	}
	if len(accepted) == 0 {
		var again []*request
		for i, r := range rejected {
			if unchecked(r, nil) {
				l.snaps.drop(part, r.cmd.accounts())
				again = append(again, r)
				continue
			}
			r.finish(Receipt{}, rejections[i])
		}
		if len(again) > 0 {
			l.stats.conflicts.Add(1)
			if cached != nil {
				l.stats.stale.Add(1)
			}
			return again, true, errRetry
		}
		return nil, false, nil
	}

	// One slice per group of accounts that accepted requests share: the script commits or
	// skips each whole, so a conflict on one account holds back only the requests that
	// touch it.
	sliceOf := func(i int) int { return groups.of(accepted[i].cmd.accounts()[0]) }
	pl := plan{partition: part, slices: groups.number()}
	for _, id := range accounts {
		if groups.has(id) {
			_, fromCache := cached[id]
			pl.accounts = append(pl.accounts, accountWrite{slice: groups.of(id), before: snaps[id], after: d.accs[id], events: d.events[id], cached: fromCache})
		}
	}
	for i, rw := range records {
		rw.slice = sliceOf(i)
		pl.records = append(pl.records, rw)
	}
	for j, key := range d.guards {
		pl.guards = append(pl.guards, guard{slice: sliceOf(guardOwner[j]), key: key})
	}
	for j, w := range d.writes {
		w.slice = sliceOf(writeOwner[j])
		pl.writes = append(pl.writes, w)
	}
	if l.beforeCommit != nil {
		l.beforeCommit(accounts[0])
	}
	for _, r := range accepted {
		r.sent = true
	}
	out, err := l.store.write(ctx, pl, [2]int64{l.cfg.IdempotencyTTL.Milliseconds(), l.cfg.OperationTokenTTL.Milliseconds()})
	if err != nil {
		// The commit may or may not have run; every request carries a record, so the
		// retry's read tells which.
		l.snaps.drop(part, accounts)
		return live, false, err
	}
	if out.taken >= 0 {
		// A resource ID one request claims exists already: that request fails, the others
		// are decided again without it.
		owner := accepted[guardOwner[out.taken]]
		owner.finish(Receipt{}, ErrIdempotencyKeyReused)
		rest := live[:0:0]
		for _, r := range live {
			if r != owner {
				rest = append(rest, r)
			}
		}
		return rest, false, errRetry
	}
	if out.existing >= 0 {
		// A record written since the read: another process committed that request. The
		// versions moved with it; read again.
		l.snaps.drop(part, accounts)
		l.stats.conflicts.Add(1)
		if len(pre) > len(cached) {
			l.stats.stalePrereads.Add(1)
		}
		return live, false, errRetry
	}

	// The cache learns what this call left, or that another process writes an account.
	var (
		cachedSlice map[int]bool // slices with an account decided on a cached snapshot
		moved       []string     // accounts of skipped slices
	)
	for i, aw := range pl.accounts {
		id := aw.after.ID
		if aw.cached {
			if cachedSlice == nil {
				cachedSlice = map[int]bool{}
			}
			cachedSlice[aw.slice] = true
		}
		switch {
		case out.skipped[aw.slice]:
			moved = append(moved, id)
		case out.fields[i] != nil:
			l.snaps.put(part, id, snapshot{acc: aw.after, fields: out.fields[i]})
		default:
			l.snaps.put(part, id, aw.before)
		}
	}
	if len(moved) > 0 {
		l.snaps.conflicted(part, moved)
	}
	committedHere := func(id string) bool { return groups.has(id) && !out.skipped[groups.of(id)] }

	// Requests of skipped slices are decided again on a fresh read, and so are the
	// rejections that read a skipped slice's accounts (decided on a stale snapshot) or
	// collided with a skipped request's record, or were decided on a cached snapshot of an
	// account that did not commit here.
	var retry []*request
	skipped := func(i int) bool { return out.skipped[sliceOf(i)] }
	committed := 0
	var committedTr []transitions
	for i, r := range accepted {
		if skipped(i) {
			retry = append(retry, r)
			continue
		}
		if refusals[i] != nil {
			r.finish(Receipt{}, refusals[i])
			continue
		}
		committed++
		committedTr = append(committedTr, tr[i])
		r.finish(Receipt{Body: bodies[i]}, nil)
	}
	for _, f := range followers {
		if skipped(f.of) {
			retry = append(retry, f.r)
			continue
		}
		l.stats.replays.Add(1)
		if refusals[f.of] != nil {
			f.r.finish(Receipt{}, decodeRefusal(records[f.of].body))
			continue
		}
		f.r.finish(Receipt{Body: bodies[f.of], Replayed: true}, nil)
	}
	for i, r := range rejected {
		stale := collided[i] >= 0 && skipped(collided[i])
		for _, id := range r.cmd.accounts() {
			stale = stale || (groups.has(id) && out.skipped[groups.of(id)])
		}
		if unchecked(r, committedHere) {
			l.snaps.drop(part, r.cmd.accounts())
			stale = true
		}
		if stale {
			retry = append(retry, r)
			continue
		}
		r.finish(Receipt{}, rejections[i])
	}
	if committed > 0 {
		l.stats.commits.Add(1)
		l.stats.operations.Add(int64(committed))
		l.metrics.committed(pl, out.skipped, committed, committedTr)
	}
	if len(retry) > 0 {
		// Stale when every skipped slice holds an account decided on a cached snapshot
		// (refusals sent back otherwise are only those of cached accounts).
		stale = cached != nil
		for sl := range out.skipped {
			stale = stale && cachedSlice[sl]
		}
		l.stats.conflicts.Add(1)
		if stale {
			l.stats.stale.Add(1)
		}
		if len(pre) > len(cached) {
			l.stats.stalePrereads.Add(1)
		}
		return inOrder(live, retry), stale, errRetry
	}
	return nil, false, nil
}

// prereads splits the accounts of pending (sorted) into those the requests brought
// snapshots of (request.pre) and those to read: an account is read when a request that
// touches it brought none (its fresh read then serves the whole batch). Of two snapshots of
// one account it keeps the newer.
func prereads(pending []*request, accounts []string) (pre map[string]snapshot, unread []string) {
	var fresh map[string]bool // accounts of requests that brought no snapshots
	for _, r := range pending {
		if r.pre == nil {
			if fresh == nil {
				fresh = map[string]bool{}
			}
			for _, id := range r.cmd.accounts() {
				fresh[id] = true
			}
			continue
		}
		if pre == nil {
			pre = make(map[string]snapshot, len(r.pre))
		}
		for id, s := range r.pre {
			if have, ok := pre[id]; !ok || s.acc.Version > have.acc.Version {
				pre[id] = s
			}
		}
	}
	if pre == nil {
		return nil, accounts
	}
	for _, id := range accounts {
		if _, ok := pre[id]; ok && !fresh[id] {
			continue
		}
		delete(pre, id)
		unread = append(unread, id)
	}
	return pre, unread
}

// inOrder returns the requests of some in the order they have in all.
func inOrder(all, some []*request) []*request {
	in := make(map[*request]bool, len(some))
	for _, r := range some {
		in[r] = true
	}
	out := make([]*request, 0, len(some))
	for _, r := range all {
		if in[r] {
			out = append(out, r)
		}
	}
	return out
}

// sliceSet groups accounts that requests share, transitively (a union-find), and numbers the
// groups from 0 in the order they were first seen.
type sliceSet struct {
	parent map[string]string
	ids    map[string]int // root → slice number, set by number
}

func newSliceSet() *sliceSet { return &sliceSet{parent: map[string]string{}} }

func (s *sliceSet) root(id string) string {
	for s.parent[id] != id {
		s.parent[id] = s.parent[s.parent[id]]
		id = s.parent[id]
	}
	return id
}

// join puts accounts in one slice.
func (s *sliceSet) join(accounts []string) {
	for _, id := range accounts {
		if _, ok := s.parent[id]; !ok {
			s.parent[id] = id
		}
	}
	for _, id := range accounts[1:] {
		if a, b := s.root(accounts[0]), s.root(id); a != b {
			s.parent[b] = a
		}
	}
}

func (s *sliceSet) has(id string) bool { _, ok := s.parent[id]; return ok }

// number numbers the slices and returns how many there are; call it after the last join.
func (s *sliceSet) number() int {
	s.ids = map[string]int{}
	ids := make([]string, 0, len(s.parent))
	for id := range s.parent {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if _, ok := s.ids[s.root(id)]; !ok {
			s.ids[s.root(id)] = len(s.ids)
		}
	}
	return len(s.ids)
}

// of returns the slice number of a joined account.
func (s *sliceSet) of(id string) int { return s.ids[s.root(id)] }

// backoff waits before retry attempt (1-based) a jittered exponential delay: RetryBackoff
// doubling up to RetryBackoffMax, at least half of it ("equal jitter"); for a group commit
// from GroupRetryBackoff. It returns ctx's error if ctx ends first.
func (l *Ledger) backoff(ctx context.Context, attempt int, group bool) error {
	p := backoff.Policy{Base: l.cfg.RetryBackoff, Max: l.cfg.RetryBackoffMax, Jitter: 0.5}
	if group {
		p.Base = l.cfg.GroupRetryBackoff
	}
	return backoff.Wait(ctx, p.Delay(attempt))
}

// newToken returns a random 128-bit hex token.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
