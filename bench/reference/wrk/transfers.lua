-- Transfers of 1..100 USD between two random accounts of ACCOUNTS (acct-0 ..); with 16
-- partitions 15 in 16 are cross-partition (the saga). Each carries its own ID. Accounts and
-- their balances come from setup.lua (a large SEED keeps 422 insufficient_funds rare).
-- A 201 or 202 is success; wrk counts anything else as "Non-2xx or 3xx responses".
-- CROSS=1 picks only pairs in different partitions (the saga every time; PARTITIONS is the
-- server's --partitions, default 16), as `tally bench --scenario transfers` does.
--   ACCOUNTS=10000 wrk -t2 -c64 -d10s --latency -s transfers.lua http://127.0.0.1:8080
--   CROSS=1 ACCOUNTS=10000 wrk -t2 -c64 -d10s --latency -s transfers.lua http://127.0.0.1:8080

local bit = require("bit")
local accounts = tonumber(os.getenv("ACCOUNTS") or "10000")
local cross = os.getenv("CROSS") == "1"
local partitions = tonumber(os.getenv("PARTITIONS") or "16")
local headers = {["Content-Type"] = "application/json"}
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  math.randomseed(os.time() * 7 + tid)
  run = tostring(os.time())
  n = 0
end

-- partition is the ledger's placement of an account ID without a placement tag: FNV-1a
-- (32 bits) of the ID modulo the partition count (ledger/keys.go). LuaJIT's bit operations
-- are signed 32-bit, and a double holds h * 403 exactly.
local function partition(id)
  local h = 2166136261
  for i = 1, #id do
    h = bit.bxor(h, id:byte(i)) % 4294967296
    h = (bit.lshift(h, 24) % 4294967296 + h * 403) % 4294967296
  end
  return h % partitions
end

function request()
  local from = math.random(0, accounts - 1)
  local to
  repeat
    to = math.random(0, accounts - 2)
    if to >= from then to = to + 1 end
  until not cross or partition("acct-" .. from) ~= partition("acct-" .. to)
  n = n + 1
  return wrk.format("POST", "/v1/transfers", headers,
    '{"id":"w' .. run .. "-" .. tid .. "-" .. n .. '","from":"acct-' .. from .. '","to":"acct-' .. to ..
    '","currency":"USD","amount":' .. math.random(1, 100) .. '}')
end
