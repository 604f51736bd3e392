-- The audit trail. Each event's hash chains it to the one before (seq order), so a
-- changed, removed or reordered row breaks every hash after it: `tessera audit verify`.
CREATE TABLE audit_events (
    seq BIGINT PRIMARY KEY NOT NULL,
    id TEXT NOT NULL UNIQUE,
    recorded BIGINT NOT NULL,
    -- The canonical JSON of the typed record: what is hashed.
    record TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_events_recorded ON audit_events (recorded);

-- The head of the chain: one row, updated in the same transaction as every append.
-- Updating it first serialises appends across instances sharing PostgreSQL.
CREATE TABLE audit_chain (
    id INTEGER PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_chain (id, seq, hash) VALUES (1, 0, '');
