package ledger

import (
	"context"
	"strings"

	"github.com/redis/go-redis/v9"
)

// SetBeforeCommit installs a hook that runs after the read and before the commit script of
// every attempt (tests use it to cut connections or let other writers in).
func (l *Ledger) SetBeforeCommit(fn func()) {
	if fn == nil {
		l.beforeCommit = nil
		return
	}
	l.beforeCommit = func(string) { fn() }
}

// SetBeforeCommitIn is SetBeforeCommit with a hook that learns one account of the batch
// (for Waiting: its partition's queue).
func (l *Ledger) SetBeforeCommitIn(fn func(account string)) { l.beforeCommit = fn }

// BreakVersionCheck replaces the commit script with the real one minus the version check
// and with stream IDs chosen by Redis instead of derived from the version: the lost-update
// bug the version check prevents. It panics if the script no longer has those parts, so
// the test cannot silently run against an unbroken store.
func (l *Ledger) BreakVersionCheck() {
	broken := commitLua
	for _, cut := range [][2]string{
		{"  if cur ~= acc.expected and not skip[acc.slice] then\n", "  if false then\n"},
		{"redis.call('XADD', acc.events, version .. '-0',", "redis.call('XADD', acc.events, '*',"},
	} {
		if !strings.Contains(broken, cut[0]) {
			panic("BreakVersionCheck: commit.lua changed; update the test hook")
		}
		broken = strings.Replace(broken, cut[0], cut[1], 1)
	}
	l.store.commit = redis.NewScript(broken)
}

// Waiting returns how many requests wait behind the current group-commit leader of the
// account's partition.
func (l *Ledger) Waiting(account string) int {
	l.queue.mu.Lock()
	defer l.queue.mu.Unlock()
	if aq := l.queue.partitions[l.store.keys.partition(account)]; aq != nil {
		return len(aq.waiting)
	}
	return 0
}

// BreakCommitScript replaces the commit script with one that fails with a script error, as a
// typo in commit.lua would.
func (l *Ledger) BreakCommitScript() {
	l.store.commit = redis.NewScript(`return redis.call('NO.SUCH.COMMAND')`)
}

// CommitRecordsTwice commits one deposit on account, naming the record key twice — what the
// write path must never send. It returns the script's verdict.
func (l *Ledger) CommitRecordsTwice(ctx context.Context, account string, key string) error {
	now := l.cfg.Clock()
	snaps, _, err := l.store.read(ctx, []string{account}, nil, now)
	if err != nil {
		return err
	}
	d := newDecision(l.store.keys, now, l.cfg.IdempotencyTTL, map[string]*Account{account: snaps[account].acc.clone()})
	if _, err := (Deposit{Account: account, Currency: "USD", Amount: 1}).decide(d); err != nil {
		return err
	}
	p := l.store.keys.partition(account)
	ref := recordRef{key: l.store.keys.idem(p, account, key), kind: "idem"}
	_, err = l.store.write(ctx, plan{
		partition: p,
		accounts:  []accountWrite{{before: snaps[account], after: d.accs[account], events: d.events[account]}},
		records:   []recordWrite{{ref: ref, kind: "idem", fingerprint: "a", body: []byte("{}")}, {ref: ref, kind: "idem", fingerprint: "a", body: []byte("{}")}},
	}, [2]int64{60_000, 60_000})
	return err
}

// StartTransfer runs only the first step of a transfer — the debit and the durable record —
// as a request that crashed right after it would leave it.
func (l *Ledger) StartTransfer(ctx context.Context, req TransferRequest) error {
	_, toErr, err := l.prepareTransfer(ctx, req.ID, req.From, req.To)
	if err != nil {
		return err
	}
	t := Transfer{ID: req.ID, From: req.From, To: req.To, Currency: req.Currency, Amount: req.Amount, Metadata: req.Metadata}
	ref := recordRef{key: l.store.keys.transfer(l.store.keys.partition(req.From), req.ID), kind: "mark", keepsRefusals: true}
	_, err = l.submitRef(ctx, transferCmd{T: t, SameTo: false, toErr: toErr}, ref, fingerprint(t))
	return err
}

// DrivingWaiters returns how many transfer process manager deliveries wait for a request of
// this Ledger that drives the same transfer.
func (l *Ledger) DrivingWaiters() int {
	l.driving.mu.Lock()
	defer l.driving.mu.Unlock()
	return l.driving.waiters
}

// TransferIndexKey returns the key naming the source account of a transfer ID.
func (l *Ledger) TransferIndexKey(id string) string { return l.store.keys.transferIndex(id) }

// TransfersPendingKey returns the key of the pending-transfers index of an account's
// partition.
func (l *Ledger) TransfersPendingKey(account string) string {
	return l.store.keys.transfersPending(l.store.keys.partition(account))
}

// EventsKey returns the key of an account's event stream.
func (l *Ledger) EventsKey(account string) string {
	return l.store.keys.events(l.store.keys.partition(account), account)
}

// HoldFields counts the pending-hold fields of an account's snapshot hash as Redis holds
// it (one per pending hold, until a commit deletes it).
func (l *Ledger) HoldFields(ctx context.Context, account string) (int, error) {
	fields, err := l.store.rdb.HKeys(ctx, l.store.keys.snapshot(l.store.keys.partition(account), account)).Result()
	n := 0
	for _, f := range fields {
		if strings.HasPrefix(f, prefixHold) {
			n++
		}
	}
	return n, err
}

// MetadataIndexKey returns the key of the metadata index of key=value for accounts
// (transfers false) or transfers in the partition of account (a transfer's source).
func (l *Ledger) MetadataIndexKey(transfers bool, account, key, value string) string {
	kind := indexAccounts
	if transfers {
		kind = indexTransfers
	}
	return l.store.keys.metadataIndex(l.store.keys.partition(account), kind, key, value)
}

// Prereads returns how many attempts decided on snapshots their callers had read, and how
// many of those a version or record check sent back to read.
func (l *Ledger) Prereads() (used, stale int64) {
	return l.stats.prereads.Load(), l.stats.stalePrereads.Load()
}

// MixedPrereads returns how many attempts decided on snapshots their callers had read while
// reading for the other requests of their batch.
func (l *Ledger) MixedPrereads() int64 { return l.stats.mixedPrereads.Load() }

// CacheEverySnapshot keeps accounts whose version check failed in the snapshot cache (no
// pause; see snapCache.conflicted), so that randomized tests with several processes on few
// accounts decide on stale cached snapshots over and over instead of once per account.
func (l *Ledger) CacheEverySnapshot() {
	if l.snaps != nil {
		l.snaps.sharedFor = 0
	}
}

// AccountDiff names what differs between two accounts ("" when nothing does), pending
// holds included; tests compare accounts with it rather than with reflect.DeepEqual, which
// would compare how their holds are laid out.
func AccountDiff(a, b *Account) string { return a.diff(b) }
