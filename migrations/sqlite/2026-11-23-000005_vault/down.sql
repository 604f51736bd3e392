DROP TABLE fhir_index;
DROP TABLE fhir_versions;
DROP TABLE fhir_resources;
