package ledger

import "github.com/redis/go-redis/v9"

// SetBeforeCommit installs a hook that runs after the read and before the commit script of
// every attempt (tests use it to cut connections or let other writers in).
func (l *Ledger) SetBeforeCommit(fn func()) { l.beforeCommit = fn }

// BreakVersionCheck replaces the commit script with one that writes without checking the
// version or deriving stream IDs from it: the lost-update bug the version check prevents.
func (l *Ledger) BreakVersionCheck() { l.store.commit = redis.NewScript(brokenCommitLua) }

const brokenCommitLua = `
local n = tonumber(ARGV[3])
local m = tonumber(ARGV[4])
local a = 7
for _ = 1, n do
  redis.call('XADD', KEYS[2], '*', 'type', ARGV[a + 1], 'event', ARGV[a + 2])
  a = a + 3
end
local fields = {}
for _ = 1, m do
  fields[#fields + 1] = ARGV[a]
  fields[#fields + 1] = ARGV[a + 1]
  a = a + 2
end
redis.call('HSET', KEYS[1], unpack(fields))
return {'OK'}
`

// Waiting returns how many requests wait behind the account's current group-commit leader.
func (l *Ledger) Waiting(account string) int {
	l.queue.mu.Lock()
	defer l.queue.mu.Unlock()
	if aq := l.queue.accounts[account]; aq != nil {
		return len(aq.waiting)
	}
	return 0
}
