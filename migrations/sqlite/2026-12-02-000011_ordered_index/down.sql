DROP INDEX fhir_index_code;
DROP INDEX fhir_index_reference;
CREATE INDEX fhir_index_code ON fhir_index (partition_id, resource_type, param, code);
CREATE INDEX fhir_index_reference ON fhir_index (partition_id, resource_type, param, reference);
ALTER TABLE fhir_index DROP COLUMN sort_lo;
ALTER TABLE fhir_index DROP COLUMN sort_hi;
