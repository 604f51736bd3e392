-- Date criteria and date sorts are answered in SQL (crates/store/src/search.rs): a
-- range scan over one parameter's values of a partition and type. It covers what a
-- search ordered by a single-valued date reads (the audit repository's newest events
-- first), so neither the count nor the page visits the table for it.
CREATE INDEX fhir_index_date ON fhir_index (partition_id, resource_type, param, lo, hi, resource_id);
