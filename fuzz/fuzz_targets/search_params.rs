//! The search-parameter parser: any query string, for a few resource types, lenient and
//! strict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{harness, pairs, BASE};

fuzz_target!(|data: &[u8]| {
    let registry = harness().vault.registry();
    let Some((selector, query)) = data.split_first() else {
        return;
    };
    let types = [
        "Observation",
        "Patient",
        "AuditEvent",
        "Encounter",
        "NoSuchType",
    ];
    let resource_type = types[usize::from(*selector) % types.len()];
    let pairs = pairs(query);
    let _ =
        tessera_vault::search::parse(registry, resource_type, &pairs, selector & 0x80 != 0, BASE);
    if let Ok(text) = std::str::from_utf8(query) {
        let _ = tessera_vault::search::parse_restriction(registry, resource_type, text);
    }
});
