-- Deposits of 1..100 USD into a random one of ACCOUNTS accounts (acct-0 ..), as the
-- independent load generator of docs/benchmarks.md (no Idempotency-Key, like tally bench's
-- deposits). Accounts come from setup.lua. ACCOUNTS=1 is one hot account. KEYED=1 gives
-- each deposit an Idempotency-Key of its own, as a client that may retry sends.
--   ACCOUNTS=10000 wrk -t2 -c64 -d10s --latency -s deposits.lua http://127.0.0.1:8080
--   KEYED=1 ACCOUNTS=10000 wrk -t2 -c64 -d10s --latency -s deposits.lua http://127.0.0.1:8080

local accounts = tonumber(os.getenv("ACCOUNTS") or "10000")
local keyed = os.getenv("KEYED") == "1"
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
  local id = "acct-" .. math.random(0, accounts - 1)
  if keyed then
    n = n + 1
    headers["Idempotency-Key"] = "dep-" .. run .. "-" .. tid .. "-" .. n
  end
  return wrk.format("POST", "/v1/accounts/" .. id .. "/deposits", headers,
    '{"currency":"USD","amount":' .. math.random(1, 100) .. '}')
end
