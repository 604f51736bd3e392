DROP TABLE audit_repository_cursor;
