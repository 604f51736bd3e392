CREATE UNIQUE INDEX audit_events_id ON audit_events (id);
