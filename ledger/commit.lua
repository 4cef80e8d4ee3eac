-- Tally commit script: for every account of one partition a version CAS, its events and its
-- snapshot; the partition outbox; idempotency and resource records; the writes that go with
-- them (hold and transfer records, expiry and pending indexes).
--
-- One call carries the requests of several accounts that waited together. They come in
-- slices (numbered from 1): requests that share an account, directly or through others,
-- are in one slice. A slice is all or nothing; a slice whose account's version moved is
-- skipped whole, and the other slices commit. Every key carries the partition's hash tag,
-- so this runs on one Cluster node. (On a single Redis, and only there, a transfer's credit
-- also completes the transfer record and pending index of the source's partition.)
--
-- KEYS[1] partition outbox stream; KEYS[2..] every other key, named by index in ARGV.
-- ARGV[1] accounts A   ARGV[2] records R   ARGV[3] guards G   ARGV[4] extra writes X
-- ARGV[5] record TTL (ms) of client idempotency keys   ARGV[6] record TTL (ms) of internal tokens
-- ARGV[7] slices S
-- then per account: slice, snapshot key index, events key index, expected version, account ID,
--   events n, snapshot fields m, deleted fields k, expected last event time ("" or the
--   snapshot's field t: checked for a decision on a cached snapshot, so that the same
--   version written by another history — after a failover lost writes — is a conflict too),
--   then n x (version, type, event JSON),
--   m x (field, value), k x field
-- then per record: slice, key index, kind ("idem" | "op" | "op-new" | "mark" | "refusal"),
--   fingerprint, response body (of a refusal: the encoded refusal). "op" records (internal
--   tokens) are fields of a hash of the partition's tokens of a tenth of a second: for them the
--   fingerprint's place holds the field (the token) and the body's the number of the
--   request's commit (its response stays in the process that sent it);
--   a call writes each such hash with one HSET and one PEXPIRE. "op-new" is a token never
--   sent before, which cannot exist, so it is not checked.
-- then per guard: slice, key index (a key that must not exist: a resource ID already taken)
-- then per write: slice, command (HSET | HDEL | ZADD | ZREM | PEXPIRE), key index,
--   argument count c, c x argument
--
-- Returns {"OK"} when every slice committed, {"PARTIAL", slice, ...} naming the slices
-- skipped for a version conflict (the others committed), {"CONFLICT"} when every slice was
-- skipped, or — committing nothing — {"IDEM", record index}, {"DUPLICATE", record index} or
-- {"TAKEN", guard index} (indexes from 1).
--
-- Every check comes before the first write: a script that fails half way keeps what it wrote.

local A, R, G, X = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local S = tonumber(ARGV[7])
local a = 8

-- Pass 1: checks. Remember where each section starts.
local skip = {} -- slice → true when one of its accounts moved
local skipped = 0
local accounts = {}
for i = 1, A do
  local acc = {
    slice = ARGV[a], snap = KEYS[tonumber(ARGV[a + 1])], events = KEYS[tonumber(ARGV[a + 2])],
    expected = tonumber(ARGV[a + 3]), id = ARGV[a + 4],
    n = tonumber(ARGV[a + 5]), m = tonumber(ARGV[a + 6]), k = tonumber(ARGV[a + 7]),
    last = ARGV[a + 8], at = a + 9,
  }
  local cur
  if acc.last == '' then
    cur = tonumber(redis.call('HGET', acc.snap, 'v') or '0')
  else
    local vt = redis.call('HMGET', acc.snap, 'v', 't')
    cur = tonumber(vt[1] or '0')
    if cur == acc.expected and (vt[2] or '') ~= acc.last then
      cur = -1 -- this version, but not the history the decision was made on
    end
  end
  if cur ~= acc.expected and not skip[acc.slice] then
    skip[acc.slice] = true
    skipped = skipped + 1
  end
  accounts[i] = acc
  a = acc.at + 3 * acc.n + 2 * acc.m + acc.k
end
if skipped == S then
  return {'CONFLICT'}
end

-- Second line of defence against a double apply: the ledger collapses requests that share a
-- record before it commits, so a call that names one record twice is a bug. Refuse it
-- whole; otherwise both copies would pass the EXISTS check and the second would overwrite
-- the record the first just wrote.
local records = a
local seen = {}
for i = 1, R do
  local key, kind = KEYS[tonumber(ARGV[a + 1])], ARGV[a + 2]
  local token = kind == 'op' or kind == 'op-new'
  local id = key
  if token then
    id = key .. '\0' .. ARGV[a + 3]
  end
  if seen[id] then
    return {'DUPLICATE', tostring(i)}
  end
  seen[id] = true
  if not skip[ARGV[a]] and kind ~= 'op-new' then
    local exists
    if token then
      exists = redis.call('HEXISTS', key, ARGV[a + 3])
    else
      exists = redis.call('EXISTS', key)
    end
    if exists == 1 then
      return {'IDEM', tostring(i)}
    end
  end
  a = a + 5
end
for i = 1, G do
  if not skip[ARGV[a]] and redis.call('EXISTS', KEYS[tonumber(ARGV[a + 1])]) == 1 then
    return {'TAKEN', tostring(i)}
  end
  a = a + 2
end
local writes = a
for _ = 1, X do
  local cmd = ARGV[a + 1]
  if cmd ~= 'HSET' and cmd ~= 'HDEL' and cmd ~= 'ZADD' and cmd ~= 'ZREM' and cmd ~= 'PEXPIRE' then
    return redis.error_reply('tally commit: write ' .. cmd .. ' not allowed')
  end
  a = a + 4 + tonumber(ARGV[a + 3])
end

-- Pass 2: writes, of the slices not skipped.

-- inSlices calls cmd on key with list[from..to] (nothing when from > to), a thousand
-- arguments at a time: unpack has a stack limit (~8,000), and a write can carry more than
-- that (a commit's tokens; an account's pending holds, a snapshot field each). A thousand
-- keeps HSET's field, value pairs whole.
local function inSlices(cmd, key, list, from, to)
  for i = from, to, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, to)))
  end
end

local outbox = KEYS[1]
for _, acc in ipairs(accounts) do
  if not skip[acc.slice] then
    local p = acc.at
    for _ = 1, acc.n do
      local version, typ, event = ARGV[p], ARGV[p + 1], ARGV[p + 2]
      -- Explicit IDs: Redis itself rejects an append that does not follow the last version.
      redis.call('XADD', acc.events, version .. '-0', 'type', typ, 'event', event)
      redis.call('XADD', outbox, '*', 'event', event, 'account', acc.id, 'version', version, 'type', typ)
      p = p + 3
    end
    inSlices('HSET', acc.snap, ARGV, p, p + 2 * acc.m - 1)
    inSlices('HDEL', acc.snap, ARGV, p + 2 * acc.m, p + 2 * acc.m + acc.k - 1)
  end
end
a = records
local tokens, tokenKeys = {}, {} -- per hash of tokens: field, value, field, value, ...
for _ = 1, R do
  if not skip[ARGV[a]] then
    local key, kind = KEYS[tonumber(ARGV[a + 1])], ARGV[a + 2]
    if kind == 'op' or kind == 'op-new' then
      local t = tokens[key]
      if not t then
        t = {}
        tokens[key] = t
        tokenKeys[#tokenKeys + 1] = key
      end
      t[#t + 1] = ARGV[a + 3]
      t[#t + 1] = ARGV[a + 4]
    elseif kind == 'refusal' then
      -- A refused request with a client's key or resource ID: kept as long as a client key.
      redis.call('HSET', key, 'fp', ARGV[a + 3], 'body', ARGV[a + 4], 'refused', '1')
      redis.call('PEXPIRE', key, ARGV[5])
    else
      redis.call('HSET', key, 'fp', ARGV[a + 3], 'body', ARGV[a + 4])
      if kind == 'idem' then
        redis.call('PEXPIRE', key, ARGV[5])
      end -- 'mark': a resource record (hold, transfer, transfer step), kept
    end
  end
  a = a + 5
end
for _, key in ipairs(tokenKeys) do
  inSlices('HSET', key, tokens[key], 1, #tokens[key])
  redis.call('PEXPIRE', key, ARGV[6]) -- each token lives at least the TTL after its write
end
a = writes
for _ = 1, X do
  local cmd, key, c = ARGV[a + 1], KEYS[tonumber(ARGV[a + 2])], tonumber(ARGV[a + 3])
  if not skip[ARGV[a]] then
    redis.call(cmd, key, unpack(ARGV, a + 4, a + 3 + c))
  end
  a = a + 4 + c
end
if skipped == 0 then
  return {'OK'}
end
local out = {'PARTIAL'}
for s in pairs(skip) do
  out[#out + 1] = s
end
return out
