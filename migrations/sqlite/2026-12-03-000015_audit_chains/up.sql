-- One hash chain per instance (issue 17). A single chain's head row serialised every
-- audit append of every instance sharing the database; now each instance appends to
-- its own chain (audit.chain, by default host:port), so instances never wait for each
-- other. The trail so far becomes the chain 'main'. Periodic checkpoints, signed with
-- an instance's TLS key, record every chain's head, so removing a whole chain or
-- rewriting one before a checkpoint is caught by `tessera audit verify`.
CREATE TABLE audit_events_chained (
    chain TEXT NOT NULL,
    seq BIGINT NOT NULL,
    id TEXT NOT NULL,
    recorded BIGINT NOT NULL,
    -- The canonical JSON of the typed record: what is hashed.
    record TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (chain, seq)
);
INSERT INTO audit_events_chained (chain, seq, id, recorded, record, hash)
    SELECT 'main', seq, id, recorded, record, hash FROM audit_events ORDER BY seq;
DROP TABLE audit_events;
ALTER TABLE audit_events_chained RENAME TO audit_events;
CREATE INDEX audit_events_recorded ON audit_events (recorded);

-- Each chain's head, updated in the transaction of each of its appends.
CREATE TABLE audit_chains (
    chain TEXT PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_chains (chain, seq, hash) SELECT 'main', seq, hash FROM audit_chain WHERE seq > 0;
DROP TABLE audit_chain;

-- How far the audit repository (ITI-81) has indexed each chain.
CREATE TABLE audit_repository_cursors (
    chain TEXT PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL
);
INSERT INTO audit_repository_cursors (chain, seq)
    SELECT 'main', seq FROM audit_repository_cursor WHERE seq > 0;
DROP TABLE audit_repository_cursor;

-- How far each ITI-20 destination has been sent each chain (the lease stays in
-- audit_deliveries: one instance delivers all chains to a destination).
CREATE TABLE audit_delivery_cursors (
    destination TEXT NOT NULL,
    chain TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (destination, chain)
);
INSERT INTO audit_delivery_cursors (destination, chain, seq)
    SELECT destination, 'main', seq FROM audit_deliveries WHERE seq > 0;
ALTER TABLE audit_deliveries DROP COLUMN seq;

-- Signed checkpoints: n counts from 1; jws is the compact JWS whose payload names the
-- previous checkpoint's hash and every chain's head.
CREATE TABLE audit_checkpoints (
    n BIGINT PRIMARY KEY NOT NULL,
    at BIGINT NOT NULL,
    jws TEXT NOT NULL
);
