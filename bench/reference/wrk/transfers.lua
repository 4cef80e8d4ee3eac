-- Transfers of 1..100 USD between two random accounts of ACCOUNTS (acct-0 ..); with 16
-- partitions 15 in 16 are cross-partition (the saga). Each carries its own ID. Accounts and
-- their balances come from setup.lua (a large SEED keeps 422 insufficient_funds rare).
-- A 201 or 202 is success; wrk counts anything else as "Non-2xx or 3xx responses".
--   ACCOUNTS=10000 wrk -t2 -c64 -d10s --latency -s transfers.lua http://127.0.0.1:8080

local accounts = tonumber(os.getenv("ACCOUNTS") or "10000")
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

function request()
  local from = math.random(0, accounts - 1)
  local to = math.random(0, accounts - 2)
  if to >= from then to = to + 1 end
  n = n + 1
  return wrk.format("POST", "/v1/transfers", headers,
    '{"id":"w' .. run .. "-" .. tid .. "-" .. n .. '","from":"acct-' .. from .. '","to":"acct-' .. to ..
    '","currency":"USD","amount":' .. math.random(1, 100) .. '}')
end
