-- Composite index rows with no number stay: no earlier version searches those parameters.
DROP TABLE fhir_reindex;
DELETE FROM fhir_index WHERE number IS NOT NULL;
DROP INDEX fhir_index_number;
ALTER TABLE fhir_index DROP COLUMN number;
