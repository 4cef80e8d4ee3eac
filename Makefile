# Tally — the two commands a fresh machine needs:
#   make run    start Tally on an embedded in-memory Redis (nothing durable)
#   make test   install redis-server and chromium if missing, then vet, format-check, race-test everything
#               and fuzz each fuzz target briefly

GO ?= go

.PHONY: run test bench bench-reference deps lint fuzz chaos smoke

run:
	$(GO) run ./cmd/tally serve

test: deps lint
	$(GO) test -race -count=1 -timeout 12m ./...
	$(MAKE) --no-print-directory fuzz

# Each fuzz target for FUZZTIME (the seed corpora in testdata/fuzz also run in every go test).
# A failure writes the input to testdata/fuzz/<target>/: commit it as a regression seed.
FUZZTIME ?= 15s
FUZZ_TARGETS = ./ledger:FuzzDecide ./ledger:FuzzDecodeEvent ./ledger:FuzzValidators ./handlers:FuzzRequests ./handlers:FuzzAmount
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t#*:}; echo "fuzz $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

# The long form of the chaos bank test (docs/chaos.md): CHAOS_DURATION of faults and traffic
# (default 10m); CHAOS_SEED=<n> replays a run's nemesis and client choices.
CHAOS_DURATION ?= 10m
chaos: deps
	CHAOS_DURATION=$(CHAOS_DURATION) $(GO) test -race -count=1 -timeout 60m -run '^TestChaosBank$$' -v ./cmd/tally

# The docker-compose.yml topology as local processes (docs/deploy.md): data Redis with AOF,
# three lock masters, two serves, a relay, and the cluster profile's serve on a 3-master Redis
# Cluster; a transfer workload through every replica, then the invariants. It also runs in
# make test.
smoke: deps
	$(GO) test -race -count=1 -run '^TestSmoke$$' -v ./cmd/tally

# Benchmarks start their own redis-server processes; results and the tally bench commands
# are in docs/benchmarks.md.
bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 2s ./ledger ./outbox

# The reference numbers of docs/benchmarks.md: tally serve under wrk (an independent HTTP load
# generator) and PostgreSQL's row-locked ledger under pgbench, with the raw commit ceiling of
# the same redis-server (bench/reference/run.sh; needs Debian's wrk and postgresql).
bench-reference:
	bench/reference/run.sh

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

# The tests start real redis-server processes (standalone, Redlock masters, a 3-master
# Cluster) and drive the operator console in headless Chromium; install Debian's packages
# when they are missing.
deps:
	@pkgs=""; \
	command -v redis-server >/dev/null && command -v redis-cli >/dev/null || pkgs=" redis-server redis-tools"; \
	command -v chromium >/dev/null || pkgs="$$pkgs chromium fonts-liberation"; \
	if [ -n "$$pkgs" ]; then \
		echo "installing$$pkgs from Debian's packages"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$pkgs >/dev/null; \
	fi
	@redis-server --version
	@chromium --version 2>/dev/null
