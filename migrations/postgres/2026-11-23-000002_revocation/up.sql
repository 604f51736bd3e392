-- Resource servers a client answers to, for introspection (space-separated).
ALTER TABLE clients ADD COLUMN resource_servers TEXT NOT NULL DEFAULT '';

-- Revoked access tokens, kept until the token would have expired anyway.
CREATE TABLE revoked_tokens (
    realm TEXT NOT NULL,
    jti TEXT NOT NULL,
    client_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL,
    PRIMARY KEY (realm, jti)
);
CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);
