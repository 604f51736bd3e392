-- Number, quantity and composite search parameters (issue 15): a number's order-preserving key
-- (tessera_vault::decimal::Decimal::key), compared byte-wise, so decimals compare
-- exactly; a quantity's unit goes in system and code; a composite's two components in the
-- columns crates/store/src/vault.rs names.
ALTER TABLE fhir_index ADD COLUMN number TEXT COLLATE "C";
-- Partial: only number rows are in it, so a planner without statistics yet (a table just
-- filled) cannot take it for the small index it would seem and scan every row of a type
-- through it (measured on PostgreSQL: every write and search of a partition did).
CREATE INDEX fhir_index_number ON fhir_index (partition_id, resource_type, param, number)
    WHERE number IS NOT NULL;
-- The resources held before were not indexed on these kinds: the store indexes them when
-- it next opens the database, then empties this table (crates/store/src/vault.rs).
CREATE TABLE fhir_reindex (kind TEXT PRIMARY KEY NOT NULL);
INSERT INTO fhir_reindex (kind) VALUES ('number'), ('quantity'), ('composite');
