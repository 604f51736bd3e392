//! FHIR JSON resource parsing and the R4 checks every create and update runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let registry = tessera_fuzz::harness().vault.registry();
    let _ = tessera_vault::resource::parse(registry, data, None);
    let _ = tessera_vault::resource::parse(registry, data, Some("Patient"));
});
