-- One deposit: lock the row, append the event and the outbox entry (pgbench script).
-- pgbench -n -c 64 -j 2 -T 10 -D accounts=10000 -f deposit.sql
\set aid random(0, :accounts - 1)
\set amount random(1, 100)
BEGIN;
UPDATE accounts SET balance = balance + :amount, version = version + 1 WHERE id = :aid RETURNING version \gset
INSERT INTO events (account, version, type, amount) VALUES (:aid, :version, 'Deposited', :amount);
INSERT INTO outbox (account, version, payload) VALUES (:aid, :version, jsonb_build_object('type', 'Deposited', 'amount', :amount));
COMMIT;
