-- Back to one chain: only the chain 'main' (the trail from before chains) can be kept
-- as it was hashed; the events of other chains are dropped.
DROP TABLE audit_checkpoints;
ALTER TABLE audit_deliveries ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
UPDATE audit_deliveries SET seq = COALESCE((SELECT c.seq FROM audit_delivery_cursors c
    WHERE c.destination = audit_deliveries.destination AND c.chain = 'main'), 0);
DROP TABLE audit_delivery_cursors;
CREATE TABLE audit_repository_cursor (id INTEGER PRIMARY KEY NOT NULL, seq BIGINT NOT NULL);
INSERT INTO audit_repository_cursor (id, seq)
    VALUES (1, COALESCE((SELECT seq FROM audit_repository_cursors WHERE chain = 'main'), 0));
DROP TABLE audit_repository_cursors;
CREATE TABLE audit_chain (id INTEGER PRIMARY KEY NOT NULL, seq BIGINT NOT NULL, hash TEXT NOT NULL);
INSERT INTO audit_chain (id, seq, hash)
    VALUES (1, COALESCE((SELECT seq FROM audit_chains WHERE chain = 'main'), 0),
               COALESCE((SELECT hash FROM audit_chains WHERE chain = 'main'), ''));
DROP TABLE audit_chains;
DELETE FROM audit_events WHERE chain <> 'main';
ALTER TABLE audit_events DROP CONSTRAINT audit_events_pkey;
ALTER TABLE audit_events DROP COLUMN chain;
ALTER TABLE audit_events ADD PRIMARY KEY (seq);
