-- AIM: accounts, the MPI-IDs that point to them, and their FHIR Vault partitions.
CREATE TABLE accounts (
    urn TEXT PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL
);

-- The primary key makes one MPI-ID point to at most one account; several MPI-IDs may
-- point to the same account (after a merge).
CREATE TABLE account_mpi_ids (
    mpi_id TEXT PRIMARY KEY NOT NULL,
    authority TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    account_urn TEXT NOT NULL REFERENCES accounts (urn),
    linked_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX account_mpi_ids_lookup ON account_mpi_ids (authority, patient_id);
CREATE INDEX account_mpi_ids_account ON account_mpi_ids (account_urn);

-- Partition ids are path segments of /fhir/{partition}: unique across all accounts.
CREATE TABLE partitions (
    id TEXT PRIMARY KEY NOT NULL,
    account_urn TEXT NOT NULL REFERENCES accounts (urn),
    -- NULL for the account's default partition.
    use_case TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX partitions_account ON partitions (account_urn);

-- Accounts a client may ask a token for (space-separated Account URNs, or *).
ALTER TABLE clients ADD COLUMN accounts TEXT NOT NULL DEFAULT '';
