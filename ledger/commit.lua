-- Tally commit script: version CAS + event append + snapshot + outbox + idempotency, all or
-- nothing. Every key carries the partition's hash tag, so this runs on one Cluster node.
--
-- KEYS[1] account snapshot hash     KEYS[2] account event stream
-- KEYS[3] partition outbox stream   KEYS[4..] idempotency / operation records, one per request
-- ARGV[1] expected version          ARGV[2] account ID
-- ARGV[3] number of events n        ARGV[4] number of snapshot fields m
-- ARGV[5] record TTL in ms for client idempotency keys
-- ARGV[6] record TTL in ms for internal operation tokens
-- then n x (version, type, event JSON), then m x (field, value),
-- then per record: (kind "idem"|"op", fingerprint, response body)
-- Returns {"OK"}, {"CONFLICT", current version}, {"IDEM", index of the record that exists}
-- or {"DUPLICATE", index of a record named twice}.
--
-- Every check comes before the first write: a script that fails half way keeps what it wrote.

local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if cur ~= tonumber(ARGV[1]) then
  return {'CONFLICT', tostring(cur)}
end
-- Second line of defence against a double apply: the ledger collapses requests that share a
-- record before it commits, so a call that names one record twice is a bug. Refuse it
-- whole; otherwise both copies would pass the EXISTS check and the second would overwrite
-- the record the first just wrote.
local seen = {}
for i = 4, #KEYS do
  if seen[KEYS[i]] then
    return {'DUPLICATE', tostring(i - 3)}
  end
  seen[KEYS[i]] = true
  if redis.call('EXISTS', KEYS[i]) == 1 then
    return {'IDEM', tostring(i - 3)}
  end
end

local account = ARGV[2]
local n = tonumber(ARGV[3])
local m = tonumber(ARGV[4])
local a = 7
for _ = 1, n do
  local version, typ, event = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  -- Explicit IDs: Redis itself rejects an append that does not follow the last version.
  redis.call('XADD', KEYS[2], version .. '-0', 'type', typ, 'event', event)
  redis.call('XADD', KEYS[3], '*', 'event', event, 'account', account, 'version', version, 'type', typ)
  a = a + 3
end
local fields = {}
for _ = 1, m do
  fields[#fields + 1] = ARGV[a]
  fields[#fields + 1] = ARGV[a + 1]
  a = a + 2
end
if m > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
end
for i = 4, #KEYS do
  local ttl = ARGV[5]
  if ARGV[a] == 'op' then ttl = ARGV[6] end
  redis.call('HSET', KEYS[i], 'fp', ARGV[a + 1], 'body', ARGV[a + 2])
  redis.call('PEXPIRE', KEYS[i], ttl)
  a = a + 3
end
return {'OK'}
