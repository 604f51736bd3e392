//! The ITI-81 query: any query string against the audit repository of a real store, as
//! an auditor, and as a patient restricted to their account.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{harness, pairs};

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let Some((selector, query)) = data.split_first() else {
        return;
    };
    let pairs = pairs(query);
    let registry = h.vault.registry();
    let restriction = match selector & 1 {
        0 => None,
        _ => tessera_vault::search::parse_restriction(
            registry,
            "AuditEvent",
            "patient=urn:tessera:account:fuzz",
        )
        .ok()
        .map(|r| vec![r]),
    };
    let _ = h.vault.search_in(
        &h.store,
        tessera_atna::REPOSITORY_PARTITION,
        "https://fuzz.test/audit/fhir",
        "AuditEvent",
        &pairs,
        selector & 2 != 0,
        restriction.as_deref(),
        tessera_vault::Reach::Own,
    );
});
