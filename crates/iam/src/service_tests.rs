//! Domain tests of the grant with a pinned clock. The HTTP suite covers the same rules
//! end to end; these pin the time-window edges, which a live clock cannot.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tessera_types::{ClientId, RealmName, ScopeSet, Secret, UnixTime};

use crate::client::{CertBinding, Client, ClientAuth, IuaAttributes, JwksSource};
use crate::grant::{CodeRecord, GrantRequest, Redeemed, RefreshRecord};
use crate::jose::{Algorithm, JwkSet, SigningKey};
use crate::request::{
    ClientAuthParams, Credentials, PresentedCertificate, TokenRequest, JWT_BEARER_ASSERTION,
};
use crate::service::secret_hash;
use crate::token::AccessTokenClaims;
use crate::user::User;
use crate::*;

const NOW: UnixTime = UnixTime(1_800_000_000);

struct MemoryStore {
    realm_key: Vec<u8>,
    clients: Vec<Client>,
    used: Mutex<HashSet<String>>,
    /// How many times a client registration was read.
    client_reads: std::sync::atomic::AtomicUsize,
}

impl IamStore for MemoryStore {
    fn realm(&self, name: &RealmName) -> Result<Option<Realm>, StoreError> {
        Ok((name.as_str() == "cara").then(|| Realm {
            name: name.clone(),
            token_lifetime_seconds: 300,
            signing_alg: Algorithm::ES256,
        }))
    }
    fn signing_keys(&self, _: &RealmName, _: UnixTime) -> Result<Vec<StoredKey>, StoreError> {
        Ok(vec![StoredKey {
            alg: Algorithm::ES256,
            pkcs8: self.realm_key.clone(),
            active: true,
            id_token: false,
        }])
    }
    fn client(&self, _: &RealmName, id: &ClientId) -> Result<Option<Client>, StoreError> {
        self.client_reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(self.clients.iter().find(|c| &c.client_id == id).cloned())
    }
    fn account_partitions(
        &self,
        _: &tessera_types::AccountUrn,
    ) -> Result<Option<Vec<tessera_types::PartitionId>>, StoreError> {
        Ok(None)
    }
    fn consume_assertion(
        &self,
        _: &RealmName,
        c: &ClientId,
        jti: &str,
        _: UnixTime,
        _: UnixTime,
    ) -> Result<bool, StoreError> {
        Ok(self.used.lock().unwrap().insert(format!("{c}/{jti}")))
    }
    // The grants of a person (codes, refresh tokens) are tested end to end against
    // the real database (tests/integration/apps.rs); these tests never reach them.
    fn user_by_id(&self, _: &RealmName, _: &str) -> Result<Option<User>, StoreError> {
        Ok(None)
    }
    fn save_code(
        &self,
        _: &RealmName,
        _: &str,
        _: &str,
        _: &CodeRecord,
        _: UnixTime,
    ) -> Result<(), StoreError> {
        Err(StoreError("not in these tests".into()))
    }
    fn redeem_code(
        &self,
        _: &RealmName,
        _: &str,
        _: UnixTime,
    ) -> Result<Redeemed<CodeRecord>, StoreError> {
        Ok(Redeemed::Unknown)
    }
    fn live_refresh(
        &self,
        _: &RealmName,
        _: &str,
        _: UnixTime,
    ) -> Result<Option<(RefreshRecord, String, i64)>, StoreError> {
        Ok(None)
    }
    fn redeem_refresh(
        &self,
        _: &RealmName,
        _: &str,
        _: UnixTime,
    ) -> Result<Redeemed<RefreshRecord>, StoreError> {
        Ok(Redeemed::Unknown)
    }
    fn record_issued(
        &self,
        _: &RealmName,
        _: &str,
        _: &AccessTokenClaims,
        _: Option<crate::service::NewRefresh<'_>>,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    fn revoke_family(&self, _: &RealmName, _: &str, _: UnixTime) -> Result<(), StoreError> {
        Ok(())
    }
    fn session_active(&self, _: &str, _: UnixTime) -> Result<bool, StoreError> {
        Ok(false)
    }
    fn partition_exists(&self, _: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
    fn save_launch(
        &self,
        _: &RealmName,
        _: &str,
        _: &crate::launch::LaunchContext,
        _: UnixTime,
    ) -> Result<(), StoreError> {
        Err(StoreError("not in these tests".into()))
    }
    fn launch(
        &self,
        _: &RealmName,
        _: &str,
        _: UnixTime,
    ) -> Result<Option<crate::launch::LaunchContext>, StoreError> {
        Ok(None)
    }
    fn use_launch(&self, _: &RealmName, _: &str, _: UnixTime) -> Result<bool, StoreError> {
        Ok(false)
    }
}

struct NoFetch;
impl JwksFetcher for NoFetch {
    fn keys(&self, _: &str, _: UnixTime) -> Result<JwkSet, String> {
        Err("offline".into())
    }
    fn refresh(&self, _: &str, _: UnixTime) -> Result<JwkSet, String> {
        Err("offline".into())
    }
}

struct Fixture {
    service: TokenService<MemoryStore>,
    realm: Arc<RealmState>,
    client_key: SigningKey,
}

fn client(id: &str, auth: ClientAuth) -> Client {
    Client {
        realm: RealmName::try_from("cara").unwrap(),
        client_id: ClientId::try_from(id).unwrap(),
        enabled: true,
        auth,
        scopes: ScopeSet::parse("system/*.rs system/Observation.cruds").unwrap(),
        partitions: vec![],
        principal_id: Some("7601000000000".into()),
        principal_name: None,
        person_ids: vec!["761337610411353650".into()],
        resource_servers: vec![],
        accounts: vec![],
        iua: IuaAttributes {
            subject_name: Some("Best Clinic".into()),
            ..IuaAttributes::default()
        },
        redirect_uris: vec![],
        launch_url: None,
    }
}

fn fixture() -> Fixture {
    let (_, realm_key) = SigningKey::generate_ec(Algorithm::ES256).unwrap();
    let (client_key, _) = SigningKey::generate_ec(Algorithm::ES384).unwrap();
    let clients = vec![
        client(
            "backend",
            ClientAuth::PrivateKeyJwt(JwksSource::Inline(JwkSet {
                keys: vec![client_key.public_jwk()],
            })),
        ),
        client(
            "tcu",
            ClientAuth::TlsClientAuth(CertBinding::Thumbprint("thumb".into())),
        ),
        client(
            "secret",
            ClientAuth::ClientSecret {
                secret_sha256: secret_hash("s3cret"),
                post: false,
            },
        ),
        client("app", ClientAuth::None),
    ];
    let store = MemoryStore {
        realm_key,
        clients,
        used: Mutex::default(),
        client_reads: Default::default(),
    };
    let settings = IamSettings {
        public_base_url: "https://iam.test".into(),
        audiences: vec!["https://iam.test/fhir".into()],
        max_assertion_lifetime_seconds: 300,
        clock_skew_seconds: 0,
        cache_seconds: 5,
        refresh_token_lifetime_seconds: 3600,
    };
    let service = TokenService::new(store, Arc::new(NoFetch), settings);
    let realm = service
        .realm(&RealmName::try_from("cara").unwrap(), NOW)
        .unwrap()
        .unwrap();
    Fixture {
        service,
        realm,
        client_key,
    }
}

impl Fixture {
    fn assertion(&self, claims: serde_json::Value) -> String {
        self.client_key.sign("JWT", &claims).unwrap()
    }

    fn good_claims(&self) -> serde_json::Value {
        json!({
            "iss": "backend", "sub": "backend", "aud": self.realm.token_endpoint,
            "exp": NOW.0 + 300, "iat": NOW.0, "jti": "j-1",
        })
    }

    fn with_assertion(&self, assertion: String, scope: Option<&str>) -> Result<Issued, OAuthError> {
        let req = TokenRequest {
            client: ClientAuthParams {
                client_assertion_type: Some(JWT_BEARER_ASSERTION.into()),
                client_assertion: Some(assertion),
                ..ClientAuthParams::default()
            },
            scope: scope.map(str::to_owned),
            ..TokenRequest::default()
        };
        self.service
            .client_credentials(&self.realm, req, &Credentials::default(), NOW)
    }

    /// The `tcu` client's token, bound to its certificate (thumbprint "thumb").
    fn bound_token(&self) -> Issued {
        self.service
            .client_credentials(&self.realm, tls_request(None), &cert("thumb"), NOW)
            .unwrap()
    }
}

fn code(result: Result<Issued, OAuthError>) -> OAuthErrorCode {
    result.unwrap_err().code
}

#[test]
fn a_valid_assertion_gets_a_token_and_cannot_be_replayed() {
    let f = fixture();
    let assertion = f.assertion(f.good_claims());
    let issued = f
        .with_assertion(assertion.clone(), Some("system/Observation.rs"))
        .unwrap();
    assert_eq!(issued.claims.sub, "backend");
    assert_eq!(issued.claims.exp, NOW.0 + 300);
    assert_eq!(issued.claims.aud, vec!["https://iam.test/fhir".to_string()]);
    assert_eq!(issued.response.scope, "system/Observation.rs");
    assert!(issued.claims.cnf.is_none());
    assert_eq!(
        code(f.with_assertion(assertion, None)),
        OAuthErrorCode::InvalidClient
    );
}

#[test]
fn assertion_time_windows_are_exact() {
    let f = fixture();
    let cases = [
        (json!({"exp": NOW.0}), false),
        (json!({"exp": NOW.0 + 1}), true),
        (json!({"exp": NOW.0 + 300}), true),
        (json!({"exp": NOW.0 + 301}), false),
        (json!({"nbf": NOW.0 + 1}), false),
        (json!({"iat": NOW.0 + 1}), false),
    ];
    for (i, (patch, ok)) in cases.into_iter().enumerate() {
        let mut claims = f.good_claims();
        claims["jti"] = json!(format!("window-{i}"));
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let result = f.with_assertion(f.assertion(claims.clone()), None);
        assert_eq!(result.is_ok(), ok, "{claims}");
    }
}

#[test]
fn assertion_identity_and_audience_are_checked() {
    let f = fixture();
    let cases = [
        json!({"sub": "other"}),
        json!({"aud": "https://iam.test/realms/other/protocol/openid-connect/token"}),
        json!({"aud": ["https://elsewhere"]}),
        json!({"jti": null}),
        json!({"exp": null}),
        json!({"iss": "nobody", "sub": "nobody"}),
        json!({"iss": "tcu", "sub": "tcu"}),
    ];
    for patch in cases {
        let mut claims = f.good_claims();
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        assert_eq!(
            code(f.with_assertion(f.assertion(claims.clone()), None)),
            OAuthErrorCode::InvalidClient,
            "{claims}"
        );
    }
    // The issuer itself is an accepted audience, as an array member too.
    let mut claims = f.good_claims();
    claims["aud"] = json!(["x", f.realm.issuer]);
    assert!(f.with_assertion(f.assertion(claims), None).is_ok());
}

#[test]
fn a_failed_request_does_not_burn_the_jti() {
    let f = fixture();
    let assertion = f.assertion(f.good_claims());
    assert_eq!(
        code(f.with_assertion(assertion.clone(), Some("system/Patient.cruds"))),
        OAuthErrorCode::InvalidScope
    );
    assert!(f
        .with_assertion(assertion, Some("system/Patient.rs"))
        .is_ok());
}

fn tls_request(scope: Option<&str>) -> TokenRequest {
    TokenRequest {
        client: ClientAuthParams {
            client_id: Some("tcu".into()),
            ..ClientAuthParams::default()
        },
        scope: scope.map(str::to_owned),
        ..TokenRequest::default()
    }
}

fn cert(thumbprint: &str) -> Credentials {
    Credentials {
        basic: None,
        certificate: Some(PresentedCertificate {
            thumbprint: thumbprint.into(),
            subject: "CN=tcu".into(),
            issuer: "CN=ca".into(),
        }),
    }
}

#[test]
fn certificate_clients_get_bound_tokens_only_with_their_certificate() {
    let f = fixture();
    let issued = f.bound_token();
    assert_eq!(issued.claims.cnf.unwrap().x5t_s256, "thumb");
    assert_eq!(
        issued.response.scope,
        "system/*.rs system/Observation.cruds"
    );
    let wrong = f
        .service
        .client_credentials(&f.realm, tls_request(None), &cert("other"), NOW);
    assert_eq!(code(wrong), OAuthErrorCode::InvalidClient);
    let none =
        f.service
            .client_credentials(&f.realm, tls_request(None), &Credentials::default(), NOW);
    assert_eq!(code(none), OAuthErrorCode::InvalidClient);
}

#[test]
fn ch_parameters_must_match_the_registration() {
    let f = fixture();
    let run = |scope: &str| {
        f.service
            .client_credentials(&f.realm, tls_request(Some(scope)), &cert("thumb"), NOW)
    };
    let ok = run("system/Patient.rs principal_id=7601000000000 person_id=761337610411353650 purpose_of_use=urn:oid:2.16.756.5.30.1.127.3.10.5|NORM").unwrap();
    let iua = &ok.claims.extensions.ihe_iua;
    let attributes = &iua.attributes;
    assert_eq!(iua.person_id.as_deref(), Some("761337610411353650"));
    assert_eq!(attributes.purpose_of_use.as_ref().unwrap().code, "NORM");
    assert_eq!(attributes.subject_name.as_deref(), Some("Best Clinic"));
    assert_eq!(
        ok.claims.extensions.ch_delegation.principal_id.as_deref(),
        Some("7601000000000")
    );
    assert_eq!(ok.response.scope, "system/Patient.rs");
    assert_eq!(
        code(run("principal_id=7601000000001")),
        OAuthErrorCode::InvalidClient
    );
    assert_eq!(code(run("person_id=1")), OAuthErrorCode::InvalidClient);
    assert_eq!(
        code(run("principal=Someone")),
        OAuthErrorCode::InvalidClient
    );
    assert_eq!(
        code(run("purpose_of_use=NORM")),
        OAuthErrorCode::InvalidRequest
    );
}

#[test]
fn scope_escalation_and_bad_scopes_are_invalid_scope() {
    let f = fixture();
    let run = |scope: &str| {
        f.service
            .client_credentials(&f.realm, tls_request(Some(scope)), &cert("thumb"), NOW)
    };
    assert_eq!(
        code(run("system/Patient.write")),
        OAuthErrorCode::InvalidScope
    );
    assert_eq!(
        code(run("patient/Observation.rs")),
        OAuthErrorCode::InvalidScope
    );
    assert_eq!(code(run("admin")), OAuthErrorCode::InvalidScope);
    assert!(run("system/Observation.cud system/Encounter.read").is_ok());
}

#[test]
fn secrets_are_checked_and_methods_are_exclusive() {
    let f = fixture();
    let basic = |secret: &str| Credentials {
        basic: Some(("secret".into(), Secret::new(secret.into()))),
        certificate: None,
    };
    let req = TokenRequest {
        ..TokenRequest::default()
    };
    assert!(f
        .service
        .client_credentials(&f.realm, req.clone(), &basic("s3cret"), NOW)
        .is_ok());
    assert_eq!(
        code(
            f.service
                .client_credentials(&f.realm, req.clone(), &basic("wrong"), NOW)
        ),
        OAuthErrorCode::InvalidClient
    );
    let both = TokenRequest {
        client: ClientAuthParams {
            client_secret: Some(Secret::new("s3cret".into())),
            ..ClientAuthParams::default()
        },
        ..req.clone()
    };
    assert_eq!(
        code(
            f.service
                .client_credentials(&f.realm, both, &basic("s3cret"), NOW)
        ),
        OAuthErrorCode::InvalidRequest
    );
    let post = TokenRequest {
        client: ClientAuthParams {
            client_id: Some("secret".into()),
            client_secret: Some(Secret::new("s3cret".into())),
            ..ClientAuthParams::default()
        },
        ..req
    };
    assert!(f
        .service
        .client_credentials(&f.realm, post, &Credentials::default(), NOW)
        .is_ok());
}

#[test]
fn resource_narrows_the_audience() {
    let f = fixture();
    let mut req = tls_request(None);
    req.resource = vec!["https://iam.test/fhir".into()];
    let issued = f
        .service
        .client_credentials(&f.realm, req.clone(), &cert("thumb"), NOW)
        .unwrap();
    assert_eq!(issued.claims.aud, vec!["https://iam.test/fhir".to_string()]);
    req.resource = vec!["https://evil.test/fhir".into()];
    assert_eq!(
        code(
            f.service
                .client_credentials(&f.realm, req, &cert("thumb"), NOW)
        ),
        OAuthErrorCode::InvalidTarget
    );
}

#[test]
fn other_grant_types_are_unsupported() {
    let form = vec![
        ("grant_type".to_owned(), "password".to_owned()),
        ("client_id".to_owned(), "tcu".to_owned()),
    ];
    assert_eq!(
        crate::grant::GrantRequest::from_form(form)
            .unwrap_err()
            .code,
        OAuthErrorCode::UnsupportedGrantType
    );
}

#[test]
fn a_public_client_gets_no_client_credentials_token() {
    let f = fixture();
    let req = TokenRequest {
        client: ClientAuthParams {
            client_id: Some("app".into()),
            ..ClientAuthParams::default()
        },
        ..TokenRequest::default()
    };
    assert_eq!(
        code(
            f.service
                .client_credentials(&f.realm, req, &Credentials::default(), NOW)
        ),
        OAuthErrorCode::UnauthorizedClient
    );
}

#[test]
fn an_access_tokens_introspection_answer_is_its_signed_claims_and_active() {
    let f = fixture();
    let issued = f.bound_token();
    let verified = f
        .realm
        .verify_access_token(&issued.response.access_token, NOW, 30)
        .unwrap();
    let payload = issued.response.access_token.split('.').nth(1).unwrap();
    let mut expected: serde_json::Value =
        serde_json::from_slice(&crate::jose::b64_decode(payload).unwrap()).unwrap();
    expected["active"] = json!(true);
    let answer: serde_json::Value = serde_json::from_str(verified.introspection_json()).unwrap();
    assert_eq!(answer, expected);
    assert_eq!(answer["cnf"]["x5t#S256"], json!("thumb"));
    // Made once, then the same text.
    assert!(std::ptr::eq(
        verified.introspection_json(),
        verified.introspection_json()
    ));
}

#[test]
fn access_token_verification_edges_are_exact() {
    let f = fixture();
    let issued = f.bound_token();
    let token = &issued.response.access_token;
    let skew = 30;
    assert!(f.realm.verify_access_token(token, NOW, skew).is_ok());
    let exp = UnixTime(issued.claims.exp);
    assert!(f
        .realm
        .verify_access_token(token, UnixTime(exp.0 - 1), skew)
        .is_ok());
    assert_eq!(
        f.realm.verify_access_token(token, exp, skew).unwrap_err(),
        InvalidToken::Expired
    );
    // Issued in the future: tolerated within the skew, refused beyond it.
    assert!(f
        .realm
        .verify_access_token(token, UnixTime(NOW.0 - skew), skew)
        .is_ok());
    assert_eq!(
        f.realm
            .verify_access_token(token, UnixTime(NOW.0 - skew - 1), skew)
            .unwrap_err(),
        InvalidToken::NotYetValid
    );

    let mut claims = serde_json::to_value(&issued.claims).unwrap();
    claims["iss"] = json!("https://iam.test/realms/other");
    let other_issuer = f.realm.signer.sign("at+jwt", &claims).unwrap();
    assert_eq!(
        f.realm
            .verify_access_token(&other_issuer, NOW, skew)
            .unwrap_err(),
        InvalidToken::WrongIssuer
    );
    let not_access = f.realm.signer.sign("JWT", &issued.claims).unwrap();
    assert_eq!(
        f.realm
            .verify_access_token(&not_access, NOW, skew)
            .unwrap_err(),
        InvalidToken::NotAnAccessToken
    );
    let stranger = f.client_key.sign("at+jwt", &issued.claims).unwrap();
    assert_eq!(
        f.realm
            .verify_access_token(&stranger, NOW, skew)
            .unwrap_err(),
        InvalidToken::UnknownKey
    );
    assert_eq!(
        f.realm
            .verify_access_token("garbage", NOW, skew)
            .unwrap_err(),
        InvalidToken::Malformed
    );
}

#[test]
fn only_a_cached_certificate_or_secret_grant_is_answered_from_memory() {
    let f = fixture();
    let reads = || {
        f.service
            .store()
            .client_reads
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let tls = || GrantRequest::ClientCredentials(tls_request(None));
    let from_memory = |request: &GrantRequest, credentials: &Credentials, now: UnixTime| {
        f.service
            .answers_from_memory(&f.realm, request, credentials, now)
    };
    // Before its registration is cached, a request needs the store.
    assert!(!from_memory(&tls(), &cert("thumb"), NOW));
    f.service
        .issue(&f.realm, tls(), &cert("thumb"), NOW)
        .unwrap();
    assert_eq!(reads(), 1);
    // Cached: answered without reading anything, as long as the cache is fresh.
    assert!(from_memory(&tls(), &cert("thumb"), NOW));
    f.service
        .issue(&f.realm, tls(), &cert("thumb"), NOW)
        .unwrap();
    assert_eq!(reads(), 1);
    assert!(!from_memory(&tls(), &cert("thumb"), UnixTime(NOW.0 + 6)));
    // An account is looked up; an assertion's jti written down; other grants use the
    // database.
    let for_account = GrantRequest::ClientCredentials(TokenRequest {
        account: Some("urn:tessera:account:1".into()),
        ..tls_request(None)
    });
    assert!(!from_memory(&for_account, &cert("thumb"), NOW));
    let asserted = GrantRequest::ClientCredentials(TokenRequest {
        client: ClientAuthParams {
            client_id: Some("tcu".into()),
            client_assertion: Some("x".into()),
            ..ClientAuthParams::default()
        },
        ..TokenRequest::default()
    });
    assert!(!from_memory(&asserted, &cert("thumb"), NOW));
    let refresh = GrantRequest::RefreshToken {
        client: ClientAuthParams {
            client_id: Some("tcu".into()),
            ..ClientAuthParams::default()
        },
        refresh_token: "r".into(),
        scope: None,
    };
    assert!(!from_memory(&refresh, &cert("thumb"), NOW));
    // A secret client by HTTP Basic: the header names it.
    let basic = Credentials {
        basic: Some(("secret".into(), Secret::new("s3cret".into()))),
        certificate: None,
    };
    let secret = || GrantRequest::ClientCredentials(TokenRequest::default());
    assert!(!from_memory(&secret(), &basic, NOW));
    f.service.issue(&f.realm, secret(), &basic, NOW).unwrap();
    assert!(from_memory(&secret(), &basic, NOW));
    // A wrong secret is refused from memory just the same.
    let wrong = Credentials {
        basic: Some(("secret".into(), Secret::new("guess".into()))),
        certificate: None,
    };
    assert!(from_memory(&secret(), &wrong, NOW));
    assert_eq!(
        code(f.service.issue(&f.realm, secret(), &wrong, NOW)),
        OAuthErrorCode::InvalidClient
    );
    assert_eq!(reads(), 2);
}
