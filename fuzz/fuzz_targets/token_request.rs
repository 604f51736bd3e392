//! The token endpoint behind HTTP: a form body decoded and issued against a real store,
//! and (first byte 0) client assertions whose claims the fuzzer shapes, signed with the
//! registered client's key, through every assertion check and the replay guard.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{harness, pairs, CLIENT_ID, NOW};
use tessera_iam::grant::GrantRequest;
use tessera_iam::request::{Credentials, JWT_BEARER_ASSERTION};

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let form = match data.split_first() {
        Some((0, claims)) => {
            let Ok(claims) = serde_json::from_slice::<serde_json::Value>(claims) else {
                return;
            };
            let Ok(assertion) = h.client_key.sign("JWT", &claims) else {
                return;
            };
            vec![
                ("grant_type".to_owned(), "client_credentials".to_owned()),
                ("client_id".to_owned(), CLIENT_ID.to_owned()),
                (
                    "client_assertion_type".to_owned(),
                    JWT_BEARER_ASSERTION.to_owned(),
                ),
                ("client_assertion".to_owned(), assertion),
            ]
        }
        _ => pairs(data),
    };
    if let Ok(request) = GrantRequest::from_form(form) {
        let _ = h
            .tokens
            .issue(&h.realm, request, &Credentials::default(), NOW);
    }
});
