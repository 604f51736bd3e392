-- People who log in, their browser sessions, what they consented to, and the
-- authorization codes and refresh tokens of the apps they authorized.
-- Secrets (session ids, codes, refresh tokens) are stored as SHA-256 hashes only.
ALTER TABLE clients ADD COLUMN redirect_uris TEXT NOT NULL DEFAULT '';
ALTER TABLE clients ADD COLUMN launch_url TEXT;
-- A realm signs access tokens with its `access` key (ES256 by default) and OpenID
-- Connect id_tokens with an RS256 `id` key, which SMART test suites require.
ALTER TABLE signing_keys ADD COLUMN key_use TEXT NOT NULL DEFAULT 'access';

CREATE TABLE users (
    realm TEXT NOT NULL REFERENCES realms (name),
    username TEXT NOT NULL,
    -- Opaque and stable: the `sub` of the user's tokens.
    id TEXT NOT NULL,
    role TEXT NOT NULL,
    -- Space-separated Account URNs.
    accounts TEXT NOT NULL,
    fhir_user TEXT,
    gln TEXT,
    enabled BOOLEAN NOT NULL,
    -- argon2id PHC string.
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (realm, username)
);
CREATE UNIQUE INDEX users_id ON users (realm, id);

CREATE TABLE user_sessions (
    id_hash TEXT PRIMARY KEY NOT NULL,
    realm TEXT NOT NULL,
    user_id TEXT NOT NULL,
    csrf TEXT NOT NULL,
    auth_time BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX user_sessions_expiry ON user_sessions (expires_at);

-- Failed logins per user and per address: each failure lengthens the wait before
-- the next attempt is looked at, up to a cap (never a lockout).
CREATE TABLE login_failures (
    throttle_key TEXT PRIMARY KEY NOT NULL,
    failures BIGINT NOT NULL,
    last_at BIGINT NOT NULL
);

CREATE TABLE consents (
    realm TEXT NOT NULL,
    user_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (realm, user_id, client_id)
);

-- A code, and everything issued from it, belongs to one family: a second use of the
-- code, or of a rotated refresh token, revokes the whole family.
CREATE TABLE authorization_codes (
    code_hash TEXT PRIMARY KEY NOT NULL,
    realm TEXT NOT NULL,
    family TEXT NOT NULL,
    -- JSON: user, client, redirect_uri, PKCE challenge, scope, partition, nonce.
    record TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX authorization_codes_expiry ON authorization_codes (expires_at);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    realm TEXT NOT NULL,
    family TEXT NOT NULL,
    record TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    revoked BOOLEAN NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);

-- The access tokens of each family, so that revoking a family revokes them too.
CREATE TABLE family_tokens (
    family TEXT NOT NULL,
    jti TEXT NOT NULL,
    realm TEXT NOT NULL,
    client_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (family, jti)
);
CREATE INDEX family_tokens_expiry ON family_tokens (expires_at);

-- EHR launch contexts (SMART App Launch "launch" parameter): registered by an EHR for
-- one app, used once, expiring.
CREATE TABLE launch_contexts (
    launch_hash TEXT PRIMARY KEY NOT NULL,
    realm TEXT NOT NULL,
    client_id TEXT NOT NULL,
    -- JSON: partition, encounter, fhirContext, banner and style.
    record TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX launch_contexts_expiry ON launch_contexts (expires_at);
