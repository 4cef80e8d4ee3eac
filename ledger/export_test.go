package ledger

import (
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
