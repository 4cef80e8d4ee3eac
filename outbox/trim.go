package outbox

import (
	"context"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// trimScript removes outbox entries that every consumer group has acknowledged and that are
// older than the retention cutoff (ARGV[1], a stream ID), in one step so that no group can
// read or claim anything in between. For each group the oldest entry it still needs is its
// oldest pending entry or, when it has none, the first entry after its last-delivered ID;
// the stream is trimmed with MINID to the smallest of those and the cutoff. A stream
// without groups is not trimmed (nobody has acknowledged anything yet).
var trimScript = redis.NewScript(`
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok or #groups == 0 then return 0 end
local function split(id)
  local d = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, d - 1)), tonumber(string.sub(id, d + 1))
end
local function less(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  return am < bm or (am == bm and as < bs)
end
local minid = ARGV[1]
for _, g in ipairs(groups) do
  local name, last, pending
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1]
    elseif g[i] == 'last-delivered-id' then last = g[i + 1]
    elseif g[i] == 'pending' then pending = tonumber(g[i + 1]) end
  end
  local d = string.find(last, '-', 1, true)
  local keep = string.sub(last, 1, d - 1) .. '-' .. string.format('%d', tonumber(string.sub(last, d + 1)) + 1)
  if pending and pending > 0 then
    local s = redis.call('XPENDING', KEYS[1], name)
    if s[2] and less(s[2], keep) then keep = s[2] end
  end
  if less(keep, minid) then minid = keep end
end
return redis.call('XTRIM', KEYS[1], 'MINID', minid)`)

// Trim removes from partition p's outbox stream the entries that every consumer group has
// acknowledged and that are older than Retention. It never removes an entry some group
// has not acknowledged (pending or not yet read). The owner of a partition calls it every
// TrimInterval; it is safe to call from anywhere at any time. It returns how many entries
// it removed.
func (r *Relay) Trim(ctx context.Context, p int) (int64, error) {
	if p < 0 || p >= r.cfg.Partitions {
		return 0, fmt.Errorf("%w: %d", ErrUnknownPartition, p)
	}
	cutoff := "9999999999999-0" // negative retention: keep nothing that is acknowledged
	if r.cfg.Retention > 0 {
		cutoff = strconv.FormatInt(r.cfg.Clock().Add(-r.cfg.Retention).UnixMilli(), 10) + "-0"
	}
	n, err := trimScript.Run(ctx, r.rdb, []string{StreamKey(r.cfg.Prefix, p)}, cutoff).Int64()
	if err != nil {
		return 0, fmt.Errorf("outbox: trim partition %d: %w", p, err)
	}
	return n, nil
}
