// ES256 access-token signing and verification: Tessera's own JOSE (tessera_iam::jose)
// against jsonwebtoken 9 (ring), on the same key and claims, one core.
use std::time::Instant;

use serde_json::json;
use tessera_iam::jose::{Algorithm, JwkSet, SigningKey, UnverifiedJws};

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20000);
    let (key, pkcs8) = SigningKey::generate_ec(Algorithm::ES256).unwrap();
    let jwk = key.public_jwk();
    let keys = JwkSet { keys: vec![jwk.clone()] };
    let claims = json!({
        "iss": "https://tessera.example/realms/cara", "sub": "tcu", "aud": ["https://tessera.example/fhir"],
        "exp": 4_102_444_800i64, "iat": 1_764_633_600i64, "nbf": 1_764_633_600i64,
        "jti": "3ZCRX77vQ2s9dJk1", "client_id": "tcu", "scope": "system/Patient.rs system/Observation.rs",
        "partitions": ["p1"], "extensions": {"ihe_iua": {"subject_name": "TCU", "subject_role": {"system": "urn:oid:2.16.756.5.30.1.127.3.10.6", "code": "HCP"}}}
    });
    // jsonwebtoken's keys: the same P-256 key (PKCS#8 DER) and its public point.
    let enc = jsonwebtoken::EncodingKey::from_ec_der(&pkcs8);
    let x = jwk.x.clone().unwrap();
    let y = jwk.y.clone().unwrap();
    let dec = jsonwebtoken::DecodingKey::from_ec_components(&x, &y).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.typ = Some("at+jwt".into());
    header.kid = Some(key.kid().to_owned());
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["https://tessera.example/fhir"]);

    for round in 0..3 {
        let t = Instant::now();
        let mut ours = Vec::new();
        for _ in 0..n { ours = key.sign("at+jwt", &claims).unwrap().into_bytes(); }
        let sign_ours = t.elapsed();
        let t = Instant::now();
        let mut theirs = String::new();
        for _ in 0..n { theirs = jsonwebtoken::encode(&header, &claims, &enc).unwrap(); }
        let sign_theirs = t.elapsed();
        let ours = String::from_utf8(ours).unwrap();
        let t = Instant::now();
        for _ in 0..n { UnverifiedJws::parse(&ours).unwrap().verify(&keys.keys).unwrap(); }
        let verify_ours = t.elapsed();
        let t = Instant::now();
        for _ in 0..n { jsonwebtoken::decode::<serde_json::Value>(&theirs, &dec, &validation).unwrap(); }
        let verify_theirs = t.elapsed();
        let per = |d: std::time::Duration| n as f64 / d.as_secs_f64();
        println!(
            "round {round}: sign tessera {:.0}/s jsonwebtoken {:.0}/s ({:+.1}%); verify tessera {:.0}/s jsonwebtoken {:.0}/s ({:+.1}%)",
            per(sign_ours), per(sign_theirs), (per(sign_theirs) / per(sign_ours) - 1.0) * 100.0,
            per(verify_ours), per(verify_theirs), (per(verify_theirs) / per(verify_ours) - 1.0) * 100.0,
        );
    }
    // Each side verifies the other's token: the same JWS.
    UnverifiedJws::parse(&jsonwebtoken::encode(&header, &claims, &enc).unwrap()).unwrap().verify(&keys.keys).unwrap();
    jsonwebtoken::decode::<serde_json::Value>(&key.sign("at+jwt", &claims).unwrap(), &dec, &validation).unwrap();
    // alg none and a header naming HS256 with the EC key: both refused by both.
    let payload = tessera_iam::jose::b64(claims.to_string().as_bytes());
    for head in [r#"{"alg":"none","typ":"at+jwt"}"#, r#"{"alg":"HS256","typ":"at+jwt"}"#] {
        let forged = format!("{}.{payload}.", tessera_iam::jose::b64(head.as_bytes()));
        assert!(UnverifiedJws::parse(&forged).and_then(|j| j.verify(&keys.keys)).is_err());
        assert!(jsonwebtoken::decode::<serde_json::Value>(&forged, &dec, &validation).is_err());
    }
    println!("cross-verification and alg none/HS256 refusals: ok");
}
