-- Number and quantity search parameters (issue 15): a value's order-preserving key
-- (tessera_vault::decimal::Decimal::key), compared byte-wise, so decimals compare
-- exactly; a quantity's unit goes in system and code.
ALTER TABLE fhir_index ADD COLUMN number TEXT COLLATE "C";
CREATE INDEX fhir_index_number ON fhir_index (partition_id, resource_type, param, number);
-- The resources held before were not indexed on these kinds: the store indexes them when
-- it next opens the database, then empties this table (crates/store/src/vault.rs).
CREATE TABLE fhir_reindex (kind TEXT PRIMARY KEY NOT NULL);
INSERT INTO fhir_reindex (kind) VALUES ('number'), ('quantity');
