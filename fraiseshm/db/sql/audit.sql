-- fraiseshm's cascade audit trail, in the kit's schema. `fraiseshm db install`
-- runs this file after kit.sql; a server whose database has no audit table
-- runs it too (fraiseshm/db/audit.py), which then needs CREATE on the
-- database. Idempotent; the advisory lock serialises workers starting at
-- once (concurrent CREATE TABLE IF NOT EXISTS can otherwise fail on pg_type).
--
-- One row per mutation: its GraphQL field, its transaction, the cascade it
-- returned (NULL when absent), the tags the server invalidated, how long the
-- function took, the verdict (ok, truncated, not_applied, missing, malformed,
-- unlisted) and the details of a failure (the entities the transaction
-- changed that its cascade does not name). Retention: the writer deletes rows
-- older than the newest audit_retention_rows.

SELECT pg_advisory_xact_lock(hashtext('fraiseshm.audit'));

CREATE SCHEMA IF NOT EXISTS fraiseshm;
REVOKE ALL ON SCHEMA fraiseshm FROM PUBLIC;

CREATE TABLE IF NOT EXISTS fraiseshm.audit (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    mutation        text NOT NULL,
    transaction_id  text,
    cascade         jsonb,
    tags            jsonb NOT NULL DEFAULT '[]',
    duration_ms     double precision NOT NULL,
    verdict         text NOT NULL,
    failure         boolean NOT NULL,
    details         jsonb NOT NULL DEFAULT '{}'
);

-- GET /admin/audit?failures=true reads the newest failures first.
CREATE INDEX IF NOT EXISTS audit_failure_idx ON fraiseshm.audit (id) WHERE failure;
CREATE INDEX IF NOT EXISTS audit_transaction_idx ON fraiseshm.audit (transaction_id);
