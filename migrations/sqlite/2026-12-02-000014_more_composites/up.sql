-- The composites with a reference first (DocumentReference's relationship) or three
-- components (MolecularSequence's coordinates) are searched now (issue 15): the store
-- indexes the resources held on them when it next opens (crates/store/src/vault.rs).
INSERT INTO fhir_reindex (kind) VALUES
    ('param:DocumentReference.relationship'),
    ('param:MolecularSequence.chromosome-variant-coordinate'),
    ('param:MolecularSequence.chromosome-window-coordinate'),
    ('param:MolecularSequence.referenceseqid-variant-coordinate'),
    ('param:MolecularSequence.referenceseqid-window-coordinate');
