-- Opens accounts acct-0 .. acct-<ACCOUNTS-1> and deposits SEED USD into each, then stops.
-- Each wrk thread takes every THREADS-th account; run with as many connections as threads
-- (wrk -t2 -c2), so that an account's open comes before its deposit.
--   ACCOUNTS=10000 SEED=1000000 THREADS=2 wrk -t2 -c2 -d120s -s setup.lua http://127.0.0.1:8080

local accounts = tonumber(os.getenv("ACCOUNTS") or "10000")
local seed = tonumber(os.getenv("SEED") or "1000000")
local threads = tonumber(os.getenv("THREADS") or "2")
local counter = 0

function setup(thread)
  thread:set("first", counter)
  counter = counter + 1
end

function init(args)
  next_account = first
  opened = false
end

function request()
  local id = "acct-" .. next_account
  if not opened then
    return wrk.format("POST", "/v1/accounts", {["Content-Type"] = "application/json"},
      '{"id":"' .. id .. '"}')
  end
  return wrk.format("POST", "/v1/accounts/" .. id .. "/deposits",
    {["Content-Type"] = "application/json", ["Idempotency-Key"] = "seed"},
    '{"currency":"USD","amount":' .. seed .. '}')
end

function response(status, headers, body)
  -- 409 account_exists: a rerun on the same Redis; the seed deposit replays (same key).
  if status ~= 201 and status ~= 409 then
    io.stderr:write("setup: ", status, " ", body, "\n")
  end
  if not opened then
    opened = true
    return
  end
  opened = false
  next_account = next_account + threads
  if next_account >= accounts then
    wrk.thread:stop()
  end
end
