-- How far the audit repository (ITI-81) has indexed the trail: the last audit_events.seq
-- copied into the repository partition. One row, locked by whoever catches up.
CREATE TABLE audit_repository_cursor (
    id INTEGER PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL
);
INSERT INTO audit_repository_cursor (id, seq) VALUES (1, 0);
