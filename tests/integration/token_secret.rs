//! ITI-71 with `client_secret_basic` and `client_secret_post`.

use base64::Engine as _;
use tessera_iam::IamStore as _;
use tessera_types::{ClientId, RealmName};

use crate::support::{Client, Env};

fn basic(id: &str, secret: &str) -> String {
    let pair = format!("{id}:{secret}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

#[test]
fn a_secret_client_authenticates_with_basic_or_post_and_only_its_hash_is_stored() {
    let env = Env::new();
    let secret = env.add_secret_client(&[
        "--client-id",
        "gateway",
        "--auth",
        "client_secret_basic",
        "--scope",
        "system/Patient.rs",
    ]);
    assert!(secret.len() >= 43, "a 256-bit secret");

    let shown = env.cli(&["client", "show", "gateway"]).unwrap();
    assert!(!shown.contains(&secret), "{shown}");
    let method = |id: &str| {
        let shown: serde_json::Value =
            serde_json::from_str(&env.cli(&["client", "show", id]).unwrap()).unwrap();
        shown["token_endpoint_auth_method"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(method("gateway"), "client_secret_basic");
    // A client registered for the form body is named so (either way is accepted).
    env.add_secret_client(&[
        "--client-id",
        "former",
        "--auth",
        "client_secret_post",
        "--scope",
        "system/Patient.rs",
    ]);
    assert_eq!(method("former"), "client_secret_post");
    let store = tessera::cli::open_store(&env.loaded()).unwrap();
    let stored = store
        .client(
            &RealmName::try_from("cara").unwrap(),
            &ClientId::try_from("gateway").unwrap(),
        )
        .unwrap()
        .unwrap();
    assert!(!format!("{:?}", stored.auth).contains(&secret));

    let _server = env.start();
    let client = Client::new(&env, None);
    let path = "/realms/cara/protocol/openid-connect/token";
    let reply = client
        .try_post_form(
            path,
            &[("grant_type", "client_credentials")],
            Some(&basic("gateway", &secret)),
        )
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["scope"], "system/Patient.rs");

    let post = client.token(&[
        ("grant_type", "client_credentials"),
        ("client_id", "gateway"),
        ("client_secret", &secret),
    ]);
    assert_eq!(post.status, 200, "{}", post.body);

    let wrong = client
        .try_post_form(
            path,
            &[("grant_type", "client_credentials")],
            Some(&basic("gateway", "wrong")),
        )
        .unwrap();
    let why = wrong.oauth_error(401, "invalid_client");
    assert!(!why.contains("wrong"));
    assert_eq!(
        wrong.header("www-authenticate"),
        Some("Basic realm=\"cara\"")
    );
    client
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", "gateway"),
            ("client_secret", "wrong"),
        ])
        .oauth_error(401, "invalid_client");
    client
        .try_post_form(
            path,
            &[("grant_type", "client_credentials")],
            Some(&basic("nobody", &secret)),
        )
        .unwrap()
        .oauth_error(401, "invalid_client");

    // Two methods at once is a malformed request (RFC 6749 2.3).
    client
        .try_post_form(
            path,
            &[
                ("grant_type", "client_credentials"),
                ("client_secret", &secret),
            ],
            Some(&basic("gateway", &secret)),
        )
        .unwrap()
        .oauth_error(400, "invalid_request");
    client
        .try_post_form(
            path,
            &[("grant_type", "client_credentials")],
            Some("Bearer abc"),
        )
        .unwrap()
        .oauth_error(400, "invalid_request");
}
