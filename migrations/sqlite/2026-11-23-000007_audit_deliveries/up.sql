-- How far each ITI-20 destination (a syslog receiver, a remote audit repository) has
-- been sent the trail: the last audit_events.seq it acknowledged. One instance at a time
-- delivers to a destination: the one holding its lease (owner until lease_until, unix
-- seconds), renewed as it goes.
CREATE TABLE audit_deliveries (
    destination TEXT PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL,
    owner TEXT NOT NULL,
    lease_until BIGINT NOT NULL
);
