DROP INDEX fhir_index_date;
