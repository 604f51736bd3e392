//! The command line as a user runs it: init, client registration, errors.

use crate::support::{run_cli, Client, Env};

#[test]
fn init_is_idempotent_and_keeps_what_exists() {
    let env = Env::new();
    let ca_before = std::fs::read(env.path("pki/ca.crt")).unwrap();
    let config_before = std::fs::read(env.path("config/tessera.toml")).unwrap();
    let mut args = vec![
        "init".to_string(),
        "--dir".into(),
        env.dir.display().to_string(),
    ];
    if crate::support::on_postgres() {
        args.extend(["--database-url".into(), env.loaded().config.database.url]);
    }
    let printed = run_cli(&args).unwrap();
    assert!(printed.contains("kept"), "{printed}");
    assert!(!printed.contains("created    realm"), "{printed}");
    assert!(!printed.contains("signing key"), "{printed}");
    assert_eq!(std::fs::read(env.path("pki/ca.crt")).unwrap(), ca_before);
    assert_eq!(
        std::fs::read(env.path("config/tessera.toml")).unwrap(),
        config_before
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(env.path("pki/ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "private keys are not readable by others");
}

#[test]
fn client_registration_errors_are_clear_and_change_nothing() {
    let env = Env::new();
    let (crt, _) = env.issue_client("c1");
    let crt = crt.to_str().unwrap();
    env.cli(&[
        "client",
        "add",
        "--client-id",
        "c1",
        "--auth",
        "tls_client_auth",
        "--cert",
        crt,
    ])
    .unwrap();
    let dup = env
        .cli(&[
            "client",
            "add",
            "--client-id",
            "c1",
            "--auth",
            "tls_client_auth",
            "--cert",
            crt,
        ])
        .unwrap_err();
    assert!(dup.to_string().contains("already exists"), "{dup}");
    let missing = env
        .cli(&[
            "client",
            "add",
            "--client-id",
            "c2",
            "--auth",
            "tls_client_auth",
        ])
        .unwrap_err();
    assert!(missing.to_string().contains("--cert"), "{missing}");
    let bad_scope = env
        .cli(&[
            "client",
            "add",
            "--client-id",
            "c3",
            "--auth",
            "client_secret_basic",
            "--scope",
            "a\"b",
        ])
        .unwrap_err();
    assert!(bad_scope.to_string().contains("--scope"), "{bad_scope}");
    let bad_key = env
        .cli(&[
            "client",
            "add",
            "--client-id",
            "c4",
            "--auth",
            "private_key_jwt",
            "--public-key",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
        ])
        .unwrap_err();
    assert!(bad_key.to_string().contains("--public-key"), "{bad_key}");
    let http_uri = env
        .cli(&[
            "client",
            "add",
            "--client-id",
            "c5",
            "--auth",
            "private_key_jwt",
            "--jwks-uri",
            "http://x/jwks",
        ])
        .unwrap_err();
    assert!(http_uri.to_string().contains("https"), "{http_uri}");
    let no_realm = env
        .cli(&[
            "client",
            "add",
            "--realm",
            "other",
            "--client-id",
            "c6",
            "--auth",
            "client_secret_basic",
        ])
        .unwrap_err();
    assert!(
        no_realm
            .to_string()
            .contains("realm 'other' does not exist"),
        "{no_realm}"
    );

    let list = env.cli(&["client", "list"]).unwrap();
    assert_eq!(list.lines().count(), 2, "only c1 was added:\n{list}");
    assert!(list.contains("c1") && list.contains("tls_client_auth"));
    let unknown = env.cli(&["client", "disable", "nobody"]).unwrap_err();
    assert!(
        unknown.to_string().contains("no client 'nobody'"),
        "{unknown}"
    );
}

#[test]
fn a_public_key_registration_uses_the_seed_002_kid() {
    let env = Env::new();
    // The reference client's RSA public key and the kid its Python code computes.
    let pem = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwnNZRLN/bjgBLe5BujbS\nzv0ehKr1txlNAZK2Bgr9BI1Y7HQjYM+8btv5KN5YEsF99Q49l4kz0eQjBF8pz3yw\nxf9Dj0DBvF6i+tuUtn1tc80R2gV99+MK85kbic7odNHS/VMPMZr/wL3VMu7/4y+g\nDOve4EWOWney532+kAla/L4xZxjGmoR7GiN2iuxx+2L4J7szIcWG6hdlA0sXPhTO\nKZ6jmjzUngdihOrnTVkC9UKUBTD+DgL6FMcptiP4SKmIlE4glcWvVvgJfZ2miFp5\nW3MYGJjd70KFAP6wVw+Axudcpus7NpZUoojtPjKVKVISvQ1bzH5OA3rqD5ZhulwO\ntQIDAQAB\n-----END PUBLIC KEY-----\n";
    let hash = ring::digest::digest(&ring::digest::SHA256, pem.as_bytes());
    let kid = &tessera_iam::jose::b64(hash.as_ref())[..16];
    let printed = env
        .cli(&[
            "client",
            "add",
            "--client-id",
            "seed",
            "--auth",
            "private_key_jwt",
            "--public-key",
            pem,
        ])
        .unwrap();
    assert!(
        printed.contains(&format!("kid={kid} alg=RS384")),
        "{printed}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&env.cli(&["client", "show", "seed"]).unwrap()).unwrap();
    assert_eq!(
        shown["credential"]["private_key_jwt"]["inline"]["keys"][0]["kid"],
        kid
    );
}

#[test]
fn configuration_errors_name_the_problem() {
    let env = Env::new();
    let config = env.path("config/tessera.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[server]", "[server]\nlisten_port = 1");
    std::fs::write(&config, text).unwrap();
    let err = env.cli(&["client", "list"]).unwrap_err().to_string();
    assert!(err.contains("listen_port"), "{err}");
    let missing = run_cli(&[
        "--config".into(),
        "/nonexistent/tessera.toml".into(),
        "client".into(),
        "list".into(),
    ])
    .unwrap_err();
    assert!(missing.to_string().contains("does not exist"), "{missing}");
}

#[test]
fn a_jti_that_begins_with_a_hyphen_can_be_revoked() {
    // base64url jtis begin with `-` one time in 64; clap must not read one as an option.
    let env = Env::new();
    let printed = env.cli(&["token", "revoke", "-Xyz_123"]).unwrap();
    assert!(printed.contains("revoked token -Xyz_123"), "{printed}");
}

/// The realm's keys as the token service reads them (decrypted), or why they cannot be.
fn realm_keys(env: &Env, realm: &str) -> Result<usize, String> {
    use tessera_iam::IamStore as _;
    let store = tessera::cli::open_store(&env.loaded()).map_err(|e| format!("{e:#}"))?;
    store
        .signing_keys(
            &realm.try_into().unwrap(),
            tessera_types::UnixTime(crate::support::now()),
        )
        .map(|keys| keys.len())
        .map_err(|e| e.0)
}

#[test]
fn realm_private_keys_are_encrypted_at_rest_and_can_be_rewrapped() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = Env::new();
    // `init` made a key encryption key beside the PKI, readable by its owner only ...
    let kek = env.path("pki/signing-keys.kek");
    assert_eq!(
        std::fs::metadata(&kek).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // ... and the database holds no private key in the clear.
    let stored = env.sql_values("SELECT private_key AS value FROM signing_keys");
    assert_eq!(stored.len(), 2, "the access and id_token keys");
    assert!(stored.iter().all(|k| k.starts_with("enc1.")), "{stored:?}");
    assert_eq!(realm_keys(&env, "cara"), Ok(2));
    let server = env.start();
    assert_eq!(
        Client::new(&env, None)
            .get("/realms/cara/protocol/openid-connect/certs")
            .status,
        200
    );
    drop(server);

    // Without its key encryption key the database's keys are useless, and say why.
    let old = env.path("old.kek");
    std::fs::rename(&kek, &old).unwrap();
    let missing = format!("{:#}", env.cli(&["keys", "rewrap"]).unwrap_err());
    assert!(
        missing.contains("signing-keys.kek cannot be read"),
        "{missing}"
    );
    env.cli(&["init", "--dir", env.path("").to_str().unwrap()])
        .unwrap();
    let other = realm_keys(&env, "cara").unwrap_err();
    assert!(other.contains("rewrap --from-key-file"), "{other}");
    // A wrong old key changes nothing; the right one re-wraps every key.
    let wrong = env.path("wrong.kek");
    std::fs::write(&wrong, tessera_iam::keywrap::Kek::generate().unwrap()).unwrap();
    let refused = env
        .cli(&["keys", "rewrap", "--from-key-file", wrong.to_str().unwrap()])
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("not the configured"),
        "{refused:#}"
    );
    assert_eq!(
        env.sql_values("SELECT private_key AS value FROM signing_keys"),
        stored
    );
    let printed = env
        .cli(&["keys", "rewrap", "--from-key-file", old.to_str().unwrap()])
        .unwrap();
    assert!(
        printed.contains("2 private keys now encrypted"),
        "{printed}"
    );
    assert_eq!(realm_keys(&env, "cara"), Ok(2));

    // An installation that stored keys unencrypted encrypts them with `keys rewrap`.
    env.configure(|c| c.iam.key_encryption_key_file = String::new());
    env.cli(&["realm", "add", "legacy"]).unwrap();
    let plain =
        env.sql_values("SELECT private_key AS value FROM signing_keys WHERE realm = 'legacy'");
    assert!(plain.iter().all(|k| !k.starts_with("enc1.")), "{plain:?}");
    env.configure(|c| c.iam.key_encryption_key_file = "pki/signing-keys.kek".into());
    let printed = env.cli(&["keys", "rewrap"]).unwrap();
    assert!(
        printed.contains("2 private keys now encrypted") && printed.contains("2 already were"),
        "{printed}"
    );
    assert!(env
        .sql_values("SELECT private_key AS value FROM signing_keys")
        .iter()
        .all(|k| k.starts_with("enc1.")));
    assert_eq!(realm_keys(&env, "legacy"), Ok(2));
}
