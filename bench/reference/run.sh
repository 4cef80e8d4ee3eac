#!/usr/bin/env bash
# Reference measurements for docs/benchmarks.md, one after the other on this machine:
#   1. the raw commit ceiling of a fresh redis-server (tally bench's ceiling phase);
#   2. tally serve over HTTP, driven by wrk (an independent generator): deposits on ACCOUNTS
#      accounts, deposits on one hot account, transfers between random accounts (15 in 16
#      cross-partition); then tally verify must pass;
#   3. PostgreSQL's row-locked ledger (pg/*.sql) driven by pgbench with the same connections.
# Everything runs on 127.0.0.1, for DURATION each, and is stopped by PID at the end.
#   bench/reference/run.sh                      # DURATION=10s CONNS=64 ACCOUNTS=10000
#   DURATION=30s SERVE_FLAGS="--projector=false" bench/reference/run.sh
# Needs: go, redis-server, wrk, curl, python3 (free ports), PostgreSQL's
# initdb/postgres/pgbench (Debian: redis-server, wrk, curl, python3, postgresql). PostgreSQL runs with fsync=off and synchronous_commit=off, like the
# Redis without persistence it is compared with.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
ACCOUNTS=${ACCOUNTS:-10000}
SEED=${SEED:-1000000}
SERVE_FLAGS=${SERVE_FLAGS:-}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tmp=$(mktemp -d)
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -f "$tmp/pg/postmaster.pid" ]; then as_pg pg_ctl -D "$tmp/pg" -m fast -w stop >/dev/null 2>&1 || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_for DESC SECONDS CMD...: run CMD every 0.2 s until it succeeds or SECONDS pass.
wait_for() {
  local desc=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for $desc" >&2; return 1; fi
    sleep 0.2
  done
}

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- env PATH="$pgbin:$PATH" "$@"; else PATH="$pgbin:$PATH" "$@"; fi
}

echo "== machine: $(nproc) vCPUs, $(redis-server --version | cut -d' ' -f3), $(wrk --version 2>&1 | head -1 | cut -d' ' -f2), $("$pgbin/postgres" --version)"
(cd "$root" && go build -o "$tmp/tally" ./cmd/tally)

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --daemonize no --logfile "$tmp/redis.log" &
pids+=($!)
wait_for "redis-server" 10 redis-cli -p "$rport" ping

echo "== raw commit ceiling of this redis-server (tally bench)"
"$tmp/tally" bench --redis "127.0.0.1:$rport" --accounts 1 --modes optimistic --group-commit true \
  --duration 1s --ceiling-duration 5s --json "$tmp/ceiling.json" >/dev/null
grep -o '"ceiling_ops_per_sec": *[0-9.]*' "$tmp/ceiling.json"

sport=$(free_port)
# shellcheck disable=SC2086 # SERVE_FLAGS is a list of flags
"$tmp/tally" serve --addr "127.0.0.1:$sport" --redis "127.0.0.1:$rport" --log-level warn $SERVE_FLAGS 2>"$tmp/serve.log" &
serve=$!
pids+=($serve)
wait_for "tally serve" 30 curl -fsS "http://127.0.0.1:$sport/readyz"
url="http://127.0.0.1:$sport"

echo "== setup: $ACCOUNTS accounts, $SEED USD each"
ACCOUNTS=$ACCOUNTS SEED=$SEED THREADS=2 wrk -t2 -c2 -d600s -s "$here/wrk/setup.lua" "$url" >/dev/null &
setup=$!
pids+=($setup)
seeded() { curl -fsS "$url/v1/accounts/acct-$1" | grep -q '"version":2'; }
setup_done() { seeded $((ACCOUNTS - 1)) && seeded $((ACCOUNTS > 1 ? ACCOUNTS - 2 : 0)); }
wait_for "the setup" 600 setup_done
kill "$setup" # wrk runs out its -d even when every thread has stopped
wait "$setup" 2>/dev/null || true

rss() { echo "serve RSS: $(($(awk '/VmRSS/ {print $2}' "/proc/$serve/status") / 1024)) MB"; }
echo "== wrk: deposits, $ACCOUNTS accounts, $CONNS connections, $DURATION"
ACCOUNTS=$ACCOUNTS wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s "$here/wrk/deposits.lua" "$url"
rss
echo "== wrk: deposits, 1 hot account, $CONNS connections, $DURATION"
ACCOUNTS=1 wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s "$here/wrk/deposits.lua" "$url"
rss
echo "== wrk: transfers between random accounts of $ACCOUNTS, $CONNS connections, $DURATION"
ACCOUNTS=$ACCOUNTS wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s "$here/wrk/transfers.lua" "$url"
rss
echo "== tally verify (after the load settles)"
wait_for "a settled ledger" 120 "$tmp/tally" verify --redis "127.0.0.1:$rport" --strict
"$tmp/tally" verify --redis "127.0.0.1:$rport"

kill "$serve"
wait "$serve" 2>/dev/null || true

echo "== PostgreSQL reference (fsync=off, synchronous_commit=off)"
mkdir -p "$tmp/pg"
if [ "$(id -u)" = 0 ]; then chown postgres "$tmp" "$tmp/pg"; chmod 755 "$tmp"; fi
pport=$(free_port)
as_pg initdb -D "$tmp/pg" -U postgres --auth=trust >/dev/null
as_pg pg_ctl -D "$tmp/pg" -w -l "$tmp/pg/server.log" \
  -o "-p $pport -k $tmp/pg -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=$((CONNS + 20)) -c shared_buffers=256MB" start >/dev/null
pg() { as_pg "$@" -h 127.0.0.1 -p "$pport" -U postgres; }
pg psql -q -v accounts="$ACCOUNTS" -v seed="$SEED" -f "$here/pg/schema.sql" postgres
secs=${DURATION%s}
echo "== pgbench: deposits, $ACCOUNTS accounts, $CONNS connections"
pg pgbench -n -c "$CONNS" -j 2 -T "$secs" -D accounts="$ACCOUNTS" -f "$here/pg/deposit.sql" postgres | grep -E "^(tps|latency|number of (transactions|failed))"
echo "== pgbench: deposits, 1 hot account, $CONNS connections"
pg pgbench -n -c "$CONNS" -j 2 -T "$secs" -D accounts=1 -f "$here/pg/deposit.sql" postgres | grep -E "^(tps|latency|number of (transactions|failed))"
echo "== pgbench: transfers, $ACCOUNTS accounts, $CONNS connections"
pg pgbench -n -c "$CONNS" -j 2 -T "$secs" -D accounts="$ACCOUNTS" -f "$here/pg/transfer.sql" postgres | grep -E "^(tps|latency|number of (transactions|failed))"
pg psql -qAt -c "SELECT 'conserved: ' || (sum(balance) = $ACCOUNTS::bigint * $SEED + (SELECT coalesce(sum(amount), 0) FROM events WHERE type = 'Deposited' AND version > 1)) || ', negative balances: ' || count(*) FILTER (WHERE balance < 0) FROM accounts" postgres
