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
//
// IDs are parsed defensively: a group that has read nothing reports "0-0" on Redis but the
// "0" it was created with on miniredis, and a reply field that is missing counts as "0-0"
// (nothing may be trimmed for that group).
var trimScript = redis.NewScript(`
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok or type(groups) ~= 'table' or #groups == 0 then return 0 end
local function parts(id)
  if type(id) ~= 'string' or id == '' then return '0', 0 end
  local d = string.find(id, '-', 1, true)
  if not d then return id, 0 end
  return string.sub(id, 1, d - 1), tonumber(string.sub(id, d + 1)) or 0
end
local function less(a, b)
  local am, as = parts(a)
  local bm, bs = parts(b)
  am, bm = tonumber(am) or 0, tonumber(bm) or 0
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
  if type(name) ~= 'string' then return 0 end
  local ms, seq = parts(last)
  local keep = ms .. '-' .. string.format('%d', seq + 1)
  if pending == nil or pending > 0 then
    local s = redis.call('XPENDING', KEYS[1], name)
    if type(s[2]) == 'string' and less(s[2], keep) then keep = s[2] end
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
	if err := r.checkPartition(p); err != nil {
		return 0, err
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
