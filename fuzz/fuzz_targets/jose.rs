//! The JWS/JWK parser: compact JWS headers and payloads, verification against a key
//! set, JWK Sets and public-key PEM.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_iam::jose::{JwkSet, UnverifiedJws};

fuzz_target!(|data: &[u8]| {
    let keys = [tessera_fuzz::harness().client_key.public_jwk()];
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(jws) = UnverifiedJws::parse(text) {
            let _ = jws.unverified_claims();
            let _ = jws.verify(&keys);
        }
        let _ = tessera_iam::pem::public_pem_to_jwk(text, None);
    }
    if let Ok(set) = serde_json::from_slice::<JwkSet>(data) {
        for jwk in &set.keys {
            let _ = tessera_iam::pem::jwk_to_pem(jwk);
        }
        if let Ok(text) = std::str::from_utf8(data) {
            if let Ok(jws) = UnverifiedJws::parse(text) {
                let _ = jws.verify(&set.keys);
            }
        }
    }
});
