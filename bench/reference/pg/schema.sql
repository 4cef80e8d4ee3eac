-- PostgreSQL reference ledger for docs/benchmarks.md: what Tally's commit does for one
-- operation, done the usual SQL way — the account row locked, its balance and version
-- updated, an event and an outbox entry inserted, in one transaction.
-- psql -v accounts=10000 -v seed=1000000 -f schema.sql

SET client_min_messages = warning;
DROP TABLE IF EXISTS outbox, events, transfers, accounts;

CREATE TABLE accounts (
  id      bigint PRIMARY KEY,
  balance bigint NOT NULL CHECK (balance >= 0),
  version bigint NOT NULL
);

CREATE TABLE events (
  account bigint NOT NULL REFERENCES accounts (id),
  version bigint NOT NULL,
  type    text   NOT NULL,
  amount  bigint NOT NULL,
  at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account, version)
);

CREATE TABLE outbox (
  id      bigserial PRIMARY KEY,
  account bigint NOT NULL,
  version bigint NOT NULL,
  payload jsonb  NOT NULL
);

CREATE TABLE transfers (
  id     text PRIMARY KEY,
  src    bigint NOT NULL,
  dst    bigint NOT NULL,
  amount bigint NOT NULL,
  status text   NOT NULL
);

INSERT INTO accounts SELECT i, :seed, 1 FROM generate_series(0, :accounts - 1) AS i;
INSERT INTO events SELECT i, 1, 'Deposited', :seed FROM generate_series(0, :accounts - 1) AS i;
VACUUM ANALYZE;
