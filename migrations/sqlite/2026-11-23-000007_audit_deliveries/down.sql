DROP TABLE audit_deliveries;
