ALTER TABLE clients DROP COLUMN accounts;
DROP TABLE partitions;
DROP TABLE account_mpi_ids;
DROP TABLE accounts;
