//! FHIR JSON resource parsing and the R4 checks every create and update runs: the JSON
//! rules, then validation against the R4 definitions; and a JSON Patch applied to it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let vault = &tessera_fuzz::harness().vault;
    let registry = vault.registry();
    let _ = tessera_vault::resource::parse(registry, data, None);
    if let Ok(resource) = tessera_vault::resource::parse(registry, data, Some("Patient")) {
        let _ = vault.conformant(resource);
    }
    // The same bytes as a patch of a small Patient.
    if let Ok(operations) = serde_json::from_slice::<serde_json::Value>(data) {
        let patient = serde_json::json!({"resourceType": "Patient", "id": "p", "name": [{"given": ["A"]}]});
        let _ = tessera_vault::patch::apply(&patient, &operations);
    }
});
