-- The FHIR Vault. Every row belongs to one partition; a resource's key is
-- (partition, type, id), so ids never collide across partitions.

-- The current version of each resource (a deletion is a version too).
CREATE TABLE fhir_resources (
    partition_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version BIGINT NOT NULL,
    -- Milliseconds since the Unix epoch.
    last_updated BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL,
    -- The resource's JSON with id and meta; empty for a deletion.
    content TEXT NOT NULL,
    PRIMARY KEY (partition_id, resource_type, id)
);

-- Every version, for vread and history.
CREATE TABLE fhir_versions (
    partition_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (partition_id, resource_type, id, version)
);
CREATE INDEX fhir_versions_time ON fhir_versions (partition_id, last_updated);

-- Search index of the current versions: one row per value a search parameter's
-- expression reaches (crates/vault/src/index.rs). Only the columns of its kind are set.
CREATE TABLE fhir_index (
    partition_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    param TEXT NOT NULL,
    system TEXT,
    code TEXT,
    text_value TEXT,
    lo BIGINT,
    hi BIGINT,
    reference TEXT,
    PRIMARY KEY (partition_id, resource_type, resource_id, ordinal)
);
CREATE INDEX fhir_index_code ON fhir_index (partition_id, resource_type, param, code);
CREATE INDEX fhir_index_reference ON fhir_index (partition_id, resource_type, param, reference);
