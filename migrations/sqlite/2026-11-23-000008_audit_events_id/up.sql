-- The trail's ids are random UUIDs: a unique index on them took a random page per
-- append (most of the drainer's writes). Recovery finds already-stored records by their
-- time instead (the `recorded` index, appended in order). SQLite cannot drop a column
-- constraint: the table is rebuilt.
CREATE TABLE audit_events_rebuilt (
    seq BIGINT PRIMARY KEY NOT NULL,
    id TEXT NOT NULL,
    recorded BIGINT NOT NULL,
    -- The canonical JSON of the typed record: what is hashed.
    record TEXT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_events_rebuilt (seq, id, recorded, record, hash)
    SELECT seq, id, recorded, record, hash FROM audit_events ORDER BY seq;
DROP TABLE audit_events;
ALTER TABLE audit_events_rebuilt RENAME TO audit_events;
CREATE INDEX audit_events_recorded ON audit_events (recorded);
