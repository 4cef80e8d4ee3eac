package ledger

import (
	"context"
	"strings"

	"github.com/redis/go-redis/v9"
)

// SetBeforeCommit installs a hook that runs after the read and before the commit script of
// every attempt (tests use it to cut connections or let other writers in).
func (l *Ledger) SetBeforeCommit(fn func()) { l.beforeCommit = fn }

// BreakVersionCheck replaces the commit script with the real one minus the version check
// and with stream IDs chosen by Redis instead of derived from the version: the lost-update
// bug the version check prevents. It panics if the script no longer has those parts, so
// the test cannot silently run against an unbroken store.
func (l *Ledger) BreakVersionCheck() {
	broken := commitLua
	for _, cut := range [][2]string{
		{"if cur ~= tonumber(ARGV[1]) then\n  return {'CONFLICT', tostring(cur)}\nend\n", ""},
		{"redis.call('XADD', KEYS[2], version .. '-0',", "redis.call('XADD', KEYS[2], '*',"},
	} {
		if !strings.Contains(broken, cut[0]) {
			panic("BreakVersionCheck: commit.lua changed; update the test hook")
		}
		broken = strings.Replace(broken, cut[0], cut[1], 1)
	}
	l.store.commit = redis.NewScript(broken)
}

// Waiting returns how many requests wait behind the account's current group-commit leader.
func (l *Ledger) Waiting(account string) int {
	l.queue.mu.Lock()
	defer l.queue.mu.Unlock()
	if aq := l.queue.accounts[account]; aq != nil {
		return len(aq.waiting)
	}
	return 0
}

// BreakCommitScript replaces the commit script with one that fails with a script error, as a
// typo in commit.lua would.
func (l *Ledger) BreakCommitScript() {
	l.store.commit = redis.NewScript(`return redis.call('NO.SUCH.COMMAND')`)
}

// CommitRecordsTwice commits one deposit event on account at version expected, naming the
// record key twice — what the write path must never send. It returns the script's verdict.
func (l *Ledger) CommitRecordsTwice(ctx context.Context, account string, expected int64, key string) error {
	acc, err := l.store.account(ctx, account)
	if err != nil {
		return err
	}
	next, events, _, err := decide(Deposit{Account: account, Currency: "USD", Amount: 1}, acc, l.cfg.Clock())
	if err != nil {
		return err
	}
	ref := recordRef{key: l.store.keys.idem(l.store.keys.partition(account), account, key), kind: "idem"}
	recs := []recordWrite{{ref: ref, fingerprint: "a", body: []byte("{}")}, {ref: ref, fingerprint: "a", body: []byte("{}")}}
	_, err = l.store.write(ctx, expected, next, events, recs, [2]int64{60_000, 60_000})
	return err
}
