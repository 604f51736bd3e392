-- The trail's ids are random UUIDs: a unique index on them took a random page per
-- append. Recovery finds already-stored records by their time instead (the `recorded`
-- index, appended in order).
ALTER TABLE audit_events DROP CONSTRAINT audit_events_id_key;
