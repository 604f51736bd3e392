DROP TABLE family_tokens;
DROP TABLE refresh_tokens;
DROP TABLE authorization_codes;
DROP TABLE consents;
DROP TABLE login_failures;
DROP TABLE user_sessions;
DROP TABLE users;
ALTER TABLE clients DROP COLUMN launch_url;
ALTER TABLE clients DROP COLUMN redirect_uris;
