-- SMART Bulk Data export (issue 15): a kick-off queues a job; a server's worker claims it
-- for a lease it renews while it writes the job's NDJSON files here (in the database, so
-- any instance of a cluster serves them, and a file and the job's progress are committed
-- together). A job whose worker stopped is taken over when its lease runs out.
CREATE TABLE export_jobs (
    id TEXT PRIMARY KEY NOT NULL,
    partition_id TEXT NOT NULL,
    -- Who asked (only they may poll, cancel and download) and what their token granted.
    client_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    scope TEXT NOT NULL,
    partitions TEXT NOT NULL,
    -- tessera_vault::export::ExportRequest as JSON.
    request TEXT NOT NULL,
    -- queued, running, completed or failed (a cancelled job is deleted).
    status TEXT NOT NULL,
    progress TEXT,
    error TEXT,
    -- Unix milliseconds.
    created BIGINT NOT NULL,
    started BIGINT,
    finished BIGINT,
    -- The claim: which attempt holds the job, until when.
    attempt INTEGER NOT NULL DEFAULT 0,
    lease_until BIGINT
);
CREATE INDEX export_jobs_status ON export_jobs (status, created);
CREATE INDEX export_jobs_client ON export_jobs (client_id, status);
CREATE TABLE export_files (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    -- output or error
    kind TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    count BIGINT NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
