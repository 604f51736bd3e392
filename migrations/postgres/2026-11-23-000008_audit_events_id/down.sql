ALTER TABLE audit_events ADD CONSTRAINT audit_events_id_key UNIQUE (id);
