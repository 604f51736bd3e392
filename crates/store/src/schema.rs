//! Table definitions matching migrations/{sqlite,postgres}.

diesel::table! {
    realms (name) {
        name -> Text,
        token_lifetime_seconds -> BigInt,
        signing_alg -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        realm -> Text,
        alg -> Text,
        private_key -> Text,
        active -> Bool,
        created_at -> BigInt,
        retired_at -> Nullable<BigInt>,
        key_use -> Text,
    }
}

diesel::table! {
    clients (realm, client_id) {
        realm -> Text,
        client_id -> Text,
        enabled -> Bool,
        auth_method -> Text,
        credential -> Text,
        scopes -> Text,
        partitions -> Text,
        person_ids -> Text,
        principal_id -> Nullable<Text>,
        principal_name -> Nullable<Text>,
        iua -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        resource_servers -> Text,
        accounts -> Text,
        redirect_uris -> Text,
        launch_url -> Nullable<Text>,
    }
}

diesel::table! {
    users (realm, username) {
        realm -> Text,
        username -> Text,
        id -> Text,
        role -> Text,
        accounts -> Text,
        fhir_user -> Nullable<Text>,
        gln -> Nullable<Text>,
        enabled -> Bool,
        password_hash -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    user_sessions (id_hash) {
        id_hash -> Text,
        realm -> Text,
        user_id -> Text,
        csrf -> Text,
        auth_time -> BigInt,
        expires_at -> BigInt,
    }
}

diesel::table! {
    login_failures (throttle_key) {
        throttle_key -> Text,
        failures -> BigInt,
        last_at -> BigInt,
    }
}

diesel::table! {
    consents (realm, user_id, client_id) {
        realm -> Text,
        user_id -> Text,
        client_id -> Text,
        scope -> Text,
        granted_at -> BigInt,
    }
}

diesel::table! {
    authorization_codes (code_hash) {
        code_hash -> Text,
        realm -> Text,
        family -> Text,
        record -> Text,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Text,
        realm -> Text,
        family -> Text,
        record -> Text,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
        revoked -> Bool,
    }
}

diesel::table! {
    family_tokens (family, jti) {
        family -> Text,
        jti -> Text,
        realm -> Text,
        client_id -> Text,
        expires_at -> BigInt,
    }
}

diesel::table! {
    used_assertions (realm, client_id, jti) {
        realm -> Text,
        client_id -> Text,
        jti -> Text,
        expires_at -> BigInt,
    }
}

diesel::table! {
    revoked_tokens (realm, jti) {
        realm -> Text,
        jti -> Text,
        client_id -> Text,
        expires_at -> BigInt,
        revoked_at -> BigInt,
    }
}

diesel::table! {
    accounts (urn) {
        urn -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    account_mpi_ids (mpi_id) {
        mpi_id -> Text,
        authority -> Text,
        patient_id -> Text,
        account_urn -> Text,
        linked_at -> BigInt,
    }
}

diesel::table! {
    partitions (id) {
        id -> Text,
        account_urn -> Text,
        use_case -> Nullable<Text>,
        created_at -> BigInt,
    }
}

diesel::table! {
    audit_events (chain, seq) {
        chain -> Text,
        seq -> BigInt,
        id -> Text,
        recorded -> BigInt,
        record -> Text,
        hash -> Text,
    }
}

diesel::table! {
    audit_chains (chain) {
        chain -> Text,
        seq -> BigInt,
        hash -> Text,
    }
}

diesel::table! {
    audit_checkpoints (n) {
        n -> BigInt,
        at -> BigInt,
        jws -> Text,
    }
}

diesel::table! {
    fhir_resources (partition_id, resource_type, id) {
        partition_id -> Text,
        resource_type -> Text,
        id -> Text,
        version -> BigInt,
        last_updated -> BigInt,
        deleted -> Bool,
        content -> Text,
    }
}

diesel::table! {
    fhir_versions (partition_id, resource_type, id, version) {
        partition_id -> Text,
        resource_type -> Text,
        id -> Text,
        version -> BigInt,
        last_updated -> BigInt,
        deleted -> Bool,
        content -> Text,
    }
}

diesel::table! {
    fhir_index (partition_id, resource_type, resource_id, ordinal) {
        partition_id -> Text,
        resource_type -> Text,
        resource_id -> Text,
        ordinal -> Integer,
        param -> Text,
        system -> Nullable<Text>,
        code -> Nullable<Text>,
        text_value -> Nullable<Text>,
        lo -> Nullable<BigInt>,
        hi -> Nullable<BigInt>,
        reference -> Nullable<Text>,
        sort_lo -> Nullable<BigInt>,
        sort_hi -> Nullable<BigInt>,
        number -> Nullable<Text>,
    }
}

diesel::table! {
    fhir_reindex (kind) {
        kind -> Text,
    }
}

diesel::table! {
    audit_repository_cursors (chain) {
        chain -> Text,
        seq -> BigInt,
    }
}

diesel::table! {
    audit_delivery_cursors (destination, chain) {
        destination -> Text,
        chain -> Text,
        seq -> BigInt,
    }
}

diesel::table! {
    audit_deliveries (destination) {
        destination -> Text,
        owner -> Text,
        lease_until -> BigInt,
    }
}

diesel::table! {
    launch_contexts (launch_hash) {
        launch_hash -> Text,
        realm -> Text,
        client_id -> Text,
        record -> Text,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    export_jobs (id) {
        id -> Text,
        partition_id -> Text,
        client_id -> Text,
        subject -> Text,
        scope -> Text,
        partitions -> Text,
        request -> Text,
        status -> Text,
        progress -> Nullable<Text>,
        error -> Nullable<Text>,
        created -> BigInt,
        started -> Nullable<BigInt>,
        finished -> Nullable<BigInt>,
        attempt -> Integer,
        lease_until -> Nullable<BigInt>,
    }
}

diesel::table! {
    export_files (job_id, seq) {
        job_id -> Text,
        seq -> Integer,
        kind -> Text,
        resource_type -> Text,
        count -> BigInt,
        content -> Text,
    }
}
