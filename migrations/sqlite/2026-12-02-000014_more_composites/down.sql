DELETE FROM fhir_reindex WHERE kind LIKE 'param:%';
