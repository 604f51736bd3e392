-- IAM: realms, their signing keys, registered clients, used client-assertion ids.
-- Times are Unix seconds (BIGINT) on both backends, so queries are identical.
CREATE TABLE realms (
    name TEXT PRIMARY KEY NOT NULL,
    token_lifetime_seconds BIGINT NOT NULL,
    signing_alg TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY NOT NULL,
    realm TEXT NOT NULL REFERENCES realms (name),
    alg TEXT NOT NULL,
    -- PKCS#8 DER, base64.
    private_key TEXT NOT NULL,
    active BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);
CREATE INDEX signing_keys_realm ON signing_keys (realm, created_at);

CREATE TABLE clients (
    realm TEXT NOT NULL REFERENCES realms (name),
    client_id TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    auth_method TEXT NOT NULL,
    -- JSON: the certificate binding, the JWKS or jwks_uri, or the secret hash.
    credential TEXT NOT NULL,
    scopes TEXT NOT NULL,
    -- Space-separated lists.
    partitions TEXT NOT NULL,
    person_ids TEXT NOT NULL,
    principal_id TEXT,
    principal_name TEXT,
    -- JSON: the IUA attributes of the registration.
    iua TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (realm, client_id)
);

-- A client assertion jti is recorded until the assertion expires; the primary key
-- makes a second use fail on every instance sharing the database.
CREATE TABLE used_assertions (
    realm TEXT NOT NULL,
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (realm, client_id, jti)
);
CREATE INDEX used_assertions_expiry ON used_assertions (expires_at);
