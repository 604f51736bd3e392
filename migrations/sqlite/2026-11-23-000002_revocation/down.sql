DROP TABLE revoked_tokens;
ALTER TABLE clients DROP COLUMN resource_servers;
