-- One transfer between two random accounts: both rows locked in id order (no deadlock), the
-- source checked for funds, both updated, two events, two outbox entries and the transfer
-- record, in one transaction (pgbench script). What Tally spreads over a saga when the
-- accounts live in different partitions, PostgreSQL does with row locks.
-- pgbench -n -c 64 -j 2 -T 10 -D accounts=10000 -f transfer.sql
\set src random(0, :accounts - 1)
\set dst (:src + random(1, :accounts - 1)) % :accounts
\set amount random(1, 100)
BEGIN;
SELECT id FROM accounts WHERE id IN (:src, :dst) ORDER BY id FOR UPDATE;
UPDATE accounts SET balance = balance - :amount, version = version + 1 WHERE id = :src AND balance >= :amount RETURNING version AS src_version \gset
UPDATE accounts SET balance = balance + :amount, version = version + 1 WHERE id = :dst RETURNING version AS dst_version \gset
INSERT INTO events (account, version, type, amount) VALUES (:src, :src_version, 'TransferDebited', :amount), (:dst, :dst_version, 'TransferCredited', :amount);
INSERT INTO outbox (account, version, payload) VALUES (:src, :src_version, jsonb_build_object('type', 'TransferDebited', 'amount', :amount)), (:dst, :dst_version, jsonb_build_object('type', 'TransferCredited', 'amount', :amount));
INSERT INTO transfers VALUES ('p' || :client_id || '-' || :src || '-' || :dst || '-' || random(), :src, :dst, :amount, 'completed');
COMMIT;
