DROP TABLE used_assertions;
DROP TABLE clients;
DROP TABLE signing_keys;
DROP TABLE realms;
