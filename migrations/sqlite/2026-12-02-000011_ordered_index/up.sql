-- Every index row carries its resource's ordering date (AuditEvent.recorded, otherwise
-- meta.lastUpdated: tessera_vault::Registry::ordering_date), so a search sorted by that
-- date and filtered on a code or a reference walks the filter's own index rows in the
-- date's order and stops at the page (crates/store/src/search.rs): the newest events of
-- one agent or one patient among millions read about a page of rows.
ALTER TABLE fhir_index ADD COLUMN sort_lo BIGINT;
ALTER TABLE fhir_index ADD COLUMN sort_hi BIGINT;
UPDATE fhir_index SET
    sort_lo = (SELECT d.lo FROM fhir_index d
               WHERE d.partition_id = fhir_index.partition_id
                 AND d.resource_type = fhir_index.resource_type
                 AND d.resource_id = fhir_index.resource_id
                 AND d.param = CASE WHEN fhir_index.resource_type = 'AuditEvent'
                                    THEN 'date' ELSE '_lastUpdated' END),
    sort_hi = (SELECT d.hi FROM fhir_index d
               WHERE d.partition_id = fhir_index.partition_id
                 AND d.resource_type = fhir_index.resource_type
                 AND d.resource_id = fhir_index.resource_id
                 AND d.param = CASE WHEN fhir_index.resource_type = 'AuditEvent'
                                    THEN 'date' ELSE '_lastUpdated' END);
DROP INDEX fhir_index_code;
DROP INDEX fhir_index_reference;
CREATE INDEX fhir_index_code ON fhir_index
    (partition_id, resource_type, param, code, sort_lo, sort_hi, resource_id);
CREATE INDEX fhir_index_reference ON fhir_index
    (partition_id, resource_type, param, reference, sort_lo, sort_hi, resource_id);
