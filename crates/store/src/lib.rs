//! The database: schema, migrations and queries, over one diesel `MultiConnection`
//! that is either SQLite (the embedded default) or PostgreSQL. The same queries run
//! on both; no code here branches by backend except to run each one's migrations.
//!
//! It implements the storage traits of the domain crates. It must not depend on the
//! web framework or TLS. Errors: typed [`StoreError`] out of this crate, with the
//! database's message kept for the log, never for a client.

#![forbid(unsafe_code)]

/// Runs a query on the connection's own backend. Through diesel's `MultiConnection` every
/// query is first written out as SQL text (to find its prepared statement by that text),
/// which was 7% of a vault read; on the concrete connection the statement is found by the
/// query's type. For the queries on the hot paths; the body must compile for both.
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match &mut *$conn {
            $crate::DbConnection::Sqlite($c) => $body,
            $crate::DbConnection::Postgres($c) => $body,
        }
    };
}

mod aim;
mod audit;
mod export;
mod schema;
mod search;
mod users;
mod vault;

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{CustomizeConnection, HandleError, ManageConnection, Pool, PooledConnection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use tessera_iam::client::{Client, ClientAuth, IuaAttributes};
use tessera_iam::grant::{CodeRecord, Redeemed, RefreshRecord};
use tessera_iam::jose::Algorithm;
use tessera_iam::launch::LaunchContext;
use tessera_iam::token::AccessTokenClaims;
use tessera_iam::user::User;
use tessera_iam::{IamStore, Realm, StoreError, StoredKey};
use tessera_introspection::RevocationStore;
use tessera_types::{AccountUrn, ClientId, PartitionId, RealmName, ScopeSet, UnixTime};

pub use crate::audit::{
    checkpoint_of, AuditWriter, ChainReport, EventRef, JournalStats, Journaled, Lease,
};
pub use crate::export::{ExportFile, ExportJob, ExportStatus, NewExport};
use crate::schema::{clients, realms, revoked_tokens, signing_keys, used_assertions};
pub use crate::users::{AddUserError, Consent, Session};

/// What a realm key signs: access tokens, or OpenID Connect id_tokens (`signing_keys.key_use`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyUse {
    Access,
    IdToken,
}

impl KeyUse {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyUse::Access => "access",
            KeyUse::IdToken => "id",
        }
    }

    fn parse(text: &str) -> Self {
        if text == KeyUse::IdToken.as_str() {
            KeyUse::IdToken
        } else {
            KeyUse::Access
        }
    }
}

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(diesel::PgConnection),
    Sqlite(diesel::SqliteConnection),
}

type DbPool = Pool<Manager>;

/// Opens connections of the one backend the URL names. (diesel's generic manager tries
/// every backend in turn and, when the database is down, reports only "Invalid
/// connection url for multiconnection"; this one reports the real error.)
#[derive(Debug)]
struct Manager {
    url: String,
    postgres: bool,
}

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConnection, Self::Error> {
        use diesel::Connection as _;
        let connection = if self.postgres {
            diesel::PgConnection::establish(&self.url).map(DbConnection::Postgres)
        } else {
            diesel::SqliteConnection::establish(&self.url).map(DbConnection::Sqlite)
        };
        connection.map_err(diesel::r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), Self::Error> {
        conn.batch_execute("SELECT 1")
            .map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        std::thread::panicking() || diesel::r2d2::R2D2Connection::is_broken(conn)
    }
}

/// Logs the pool's connection errors (a database outage) with their real cause, at most
/// once per [`ERROR_LOG_INTERVAL`], saying how many were left out in between.
#[derive(Debug, Default)]
struct RateLimitedErrors {
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl HandleError<diesel::r2d2::Error> for RateLimitedErrors {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let (last, suppressed) = &mut *state;
        let due = last.is_none_or(|at| at.elapsed() >= ERROR_LOG_INTERVAL);
        if due {
            tracing::error!(
                %error,
                suppressed = *suppressed,
                "database connection failed (further failures are logged at most every 10 s)"
            );
            *last = Some(std::time::Instant::now());
            *suppressed = 0;
        } else {
            *suppressed += 1;
        }
    }
}

/// SQLite needs its settings on every connection: WAL lets readers run beside the
/// writer, the busy timeout makes writers wait instead of failing, and foreign keys
/// are off unless asked for.
#[derive(Debug)]
struct SqliteSettings;

impl CustomizeConnection<DbConnection, diesel::r2d2::Error> for SqliteSettings {
    fn on_acquire(&self, conn: &mut DbConnection) -> Result<(), diesel::r2d2::Error> {
        if let DbConnection::Sqlite(conn) = conn {
            conn.batch_execute(
                // The busy timeout first: switching to WAL needs a lock as well, and a
                // new connection opened while another one writes must wait for it too.
                "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                 PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; \
                 PRAGMA temp_store = MEMORY;",
            )
            .map_err(diesel::r2d2::Error::QueryError)?;
        }
        Ok(())
    }
}

/// A database URL: `sqlite://PATH` (or a bare path) or `postgres://...`.
fn connection_url(url: &str) -> String {
    match url.strip_prefix("sqlite://") {
        Some(path) => path.to_owned(),
        None => url.to_owned(),
    }
}

/// The audit chain of a store not told otherwise, and the name the trail from before
/// chains (one chain for all instances) was given.
pub const DEFAULT_CHAIN: &str = "main";

pub(crate) fn db_error(err: impl std::fmt::Display) -> StoreError {
    StoreError(err.to_string())
}

/// The database behind Tessera. Cheap to clone: it is a connection pool.
#[derive(Clone)]
pub struct Store {
    pool: DbPool,
    backend: &'static str,
    /// Encrypts realm private keys at rest; `None`: they are stored plain.
    kek: Option<std::sync::Arc<tessera_iam::keywrap::Kek>>,
    /// The audit hash chain this store's appends extend (one per instance).
    chain: std::sync::Arc<str>,
    /// Partitions seen to exist, with their account. Nothing deletes a partition or
    /// moves it to another account, so an entry stays true.
    known_partitions: std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, String>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

/// Why a client could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddClientError {
    #[error("client '{0}' already exists in this realm")]
    Exists(String),
    #[error("realm '{0}' does not exist")]
    NoRealm(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Connects and brings the schema up to date.
    pub fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            "postgres"
        } else {
            "sqlite"
        };
        let manager = Manager {
            url: connection_url(url),
            postgres: backend == "postgres",
        };
        let pool = Pool::builder()
            .max_size(max_connections.max(1))
            .connection_timeout(Duration::from_secs(10))
            .error_handler(Box::new(RateLimitedErrors::default()))
            // A PostgreSQL connection can go stale (the server restarted, a proxy timed
            // it out): test it before each use. A SQLite connection is a file this
            // process has open and cannot; testing it parsed and ran `SELECT 1` for each
            // request that reads (7% of an introspection's instructions).
            .test_on_check_out(backend == "postgres")
            .connection_customizer(Box::new(SqliteSettings))
            .build(manager)
            .map_err(|e| StoreError(format!("cannot connect to the {backend} database: {e}")))?;
        let store = Self {
            pool,
            backend,
            kek: None,
            chain: DEFAULT_CHAIN.into(),
            known_partitions: Default::default(),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Can a short read run on the caller's thread now, without waiting on anything?
    /// On SQLite, when a pooled connection is idle: the read is a lookup in the
    /// process's own page cache, cheaper than the hop to another thread and back. Not
    /// on PostgreSQL, where every query waits for a round trip.
    pub fn reads_at_once(&self) -> bool {
        self.backend == "sqlite" && self.pool.state().idle_connections > 0
    }

    /// Audit records are appended to the hash chain named `chain` (an instance's own:
    /// instances on different chains never wait for each other's appends).
    pub fn with_audit_chain(mut self, chain: &str) -> Self {
        self.chain = chain.into();
        self
    }

    /// The hash chain this store appends audit records to.
    pub fn audit_chain(&self) -> &str {
        &self.chain
    }

    /// Realm private keys are written encrypted with `kek` and read with it.
    pub fn with_kek(mut self, kek: Option<tessera_iam::keywrap::Kek>) -> Self {
        self.kek = kek.map(std::sync::Arc::new);
        self
    }

    /// Encrypts every stored private key with this store's KEK (decrypting with `old`
    /// or this KEK, or reading plain keys), in one transaction. Answers (re-wrapped,
    /// already under this KEK).
    pub fn rewrap_keys(
        &self,
        old: Option<&tessera_iam::keywrap::Kek>,
    ) -> Result<(usize, usize), StoreError> {
        use tessera_iam::keywrap;
        let kek = self
            .kek
            .as_deref()
            .ok_or_else(|| StoreError("no key encryption key is configured to wrap with".into()))?;
        let mut conn = self.conn()?;
        let rows: Vec<(String, String, String)> = signing_keys::table
            .select((
                signing_keys::kid,
                signing_keys::realm,
                signing_keys::private_key,
            ))
            .load(&mut *conn)
            .map_err(db_error)?;
        // Every key is opened before anything is written: one that cannot be leaves all
        // of them as they were.
        let mut current = 0;
        let mut rewrapped = Vec::new();
        for (kid, realm, stored) in rows {
            if kek.wrapped(&stored) {
                current += 1;
                continue;
            }
            let plain = keywrap::unwrap(old, &realm, &kid, &stored)
                .map_err(|e| db_error(format!("key {kid} of realm {realm}: {e}")))?;
            rewrapped.push((
                kid.clone(),
                kek.wrap(&realm, &kid, &plain).map_err(db_error)?,
            ));
        }
        conn.transaction(|conn| {
            for (kid, wrapped) in &rewrapped {
                diesel::update(signing_keys::table.filter(signing_keys::kid.eq(kid)))
                    .set(signing_keys::private_key.eq(wrapped))
                    .execute(conn)?;
            }
            diesel::QueryResult::Ok(())
        })
        .map_err(db_error)?;
        Ok((rewrapped.len(), current))
    }

    /// The id of the key encryption key this store wraps keys with, if it has one.
    pub fn kek_id(&self) -> Option<&str> {
        self.kek.as_deref().map(tessera_iam::keywrap::Kek::id)
    }

    /// How many stored private keys are not encrypted.
    pub fn plain_keys(&self) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        let stored: Vec<String> = signing_keys::table
            .select(signing_keys::private_key)
            .load(&mut *conn)
            .map_err(db_error)?;
        Ok(stored
            .iter()
            .filter(|s| !tessera_iam::keywrap::is_wrapped(s))
            .count())
    }

    pub(crate) fn conn(&self) -> Result<PooledConnection<Manager>, StoreError> {
        self.pool.get().map_err(db_error)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let applied = match &mut *conn {
            DbConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()),
            DbConnection::Postgres(c) => c
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(|v| v.len()),
        }
        .map_err(|e| StoreError(format!("migration failed: {e}")))?;
        if applied > 0 {
            tracing::info!(
                applied,
                backend = self.backend,
                "database migrations applied"
            );
        }
        let indexed = vault::reindex_pending(&mut conn).map_err(db_error)?;
        if indexed > 0 {
            tracing::info!(
                indexed,
                "resources indexed on new kinds of search parameter"
            );
        }
        Ok(())
    }

    /// Answers whether the database is reachable (readiness).
    pub fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
            .execute(&mut *conn)
            .map(|_| ())
            .map_err(db_error)
    }

    /// Creates the realm unless it exists; returns whether it was created.
    pub fn ensure_realm(
        &self,
        name: &RealmName,
        lifetime: i64,
        alg: Algorithm,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let exists = realms::table
            .filter(realms::name.eq(name.as_str()))
            .count()
            .get_result::<i64>(&mut *conn)
            .map_err(db_error)?;
        if exists > 0 {
            return Ok(false);
        }
        diesel::insert_into(realms::table)
            .values((
                realms::name.eq(name.as_str()),
                realms::token_lifetime_seconds.eq(lifetime),
                realms::signing_alg.eq(alg.name()),
                realms::created_at.eq(now.0),
            ))
            .execute(&mut *conn)
            .map_err(db_error)?;
        Ok(true)
    }

    /// Makes a new key the one that signs for its use (access tokens or id_tokens), in
    /// one transaction. Keys of that use that were signing stop signing and are retired at
    /// `retire_previous_at` (when every token they signed has expired); until then they
    /// stay in the JWKS and verify.
    #[allow(clippy::too_many_arguments)]
    pub fn add_signing_key(
        &self,
        realm: &RealmName,
        key_use: KeyUse,
        kid: &str,
        alg: Algorithm,
        pkcs8: &[u8],
        now: UnixTime,
        retire_previous_at: UnixTime,
    ) -> Result<(), StoreError> {
        let encoded = tessera_iam::keywrap::store(self.kek.as_deref(), realm.as_str(), kid, pkcs8)
            .map_err(db_error)?;
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            let of_realm = signing_keys::realm.eq(realm.as_str());
            let same_use = signing_keys::key_use.eq(key_use.as_str());
            diesel::update(
                signing_keys::table
                    .filter(of_realm)
                    .filter(same_use)
                    .filter(signing_keys::retired_at.is_null()),
            )
            .set(signing_keys::retired_at.eq(retire_previous_at.0))
            .execute(conn)?;
            diesel::update(signing_keys::table.filter(of_realm).filter(same_use))
                .set(signing_keys::active.eq(false))
                .execute(conn)?;
            if key_use == KeyUse::Access {
                diesel::update(realms::table.filter(realms::name.eq(realm.as_str())))
                    .set(realms::signing_alg.eq(alg.name()))
                    .execute(conn)?;
            }
            diesel::insert_into(signing_keys::table)
                .values((
                    signing_keys::kid.eq(kid),
                    signing_keys::realm.eq(realm.as_str()),
                    signing_keys::alg.eq(alg.name()),
                    signing_keys::private_key.eq(&encoded),
                    signing_keys::active.eq(true),
                    signing_keys::created_at.eq(now.0),
                    signing_keys::key_use.eq(key_use.as_str()),
                ))
                .execute(conn)
                .map(|_| ())
        })
        .map_err(db_error)
    }

    /// Does the realm have a key that signs for `key_use`?
    pub fn has_signing_key(&self, realm: &RealmName, key_use: KeyUse) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let count: i64 = signing_keys::table
            .filter(signing_keys::realm.eq(realm.as_str()))
            .filter(signing_keys::key_use.eq(key_use.as_str()))
            .filter(signing_keys::active.eq(true))
            .count()
            .get_result(&mut *conn)
            .map_err(db_error)?;
        Ok(count > 0)
    }

    pub fn insert_client(&self, client: &Client, now: UnixTime) -> Result<(), AddClientError> {
        let mut conn = self.conn()?;
        let realm_exists = realms::table
            .filter(realms::name.eq(client.realm.as_str()))
            .count()
            .get_result::<i64>(&mut *conn)
            .map_err(db_error)?;
        if realm_exists == 0 {
            return Err(AddClientError::NoRealm(client.realm.to_string()));
        }
        let row = ClientRow::from_client(client, now)?;
        match diesel::insert_into(clients::table)
            .values(&row)
            .execute(&mut *conn)
        {
            Ok(_) => Ok(()),
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                Err(AddClientError::Exists(client.client_id.to_string()))
            }
            Err(e) => Err(AddClientError::Store(db_error(e))),
        }
    }

    pub fn list_realms(&self) -> Result<Vec<Realm>, StoreError> {
        let mut conn = self.conn()?;
        let rows: Vec<(String, i64, String)> = realms::table
            .order(realms::name.asc())
            .select((
                realms::name,
                realms::token_lifetime_seconds,
                realms::signing_alg,
            ))
            .load(&mut *conn)
            .map_err(db_error)?;
        rows.into_iter().map(realm_from_row).collect()
    }

    pub fn list_clients(&self, realm: &RealmName) -> Result<Vec<Client>, StoreError> {
        let mut conn = self.conn()?;
        let rows: Vec<ClientRow> = clients::table
            .filter(clients::realm.eq(realm.as_str()))
            .order(clients::client_id.asc())
            .load(&mut *conn)
            .map_err(db_error)?;
        rows.into_iter().map(ClientRow::into_client).collect()
    }

    /// Enables or disables a client; returns false if there is no such client.
    pub fn set_client_enabled(
        &self,
        realm: &RealmName,
        id: &ClientId,
        enabled: bool,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let changed = diesel::update(
            clients::table
                .filter(clients::realm.eq(realm.as_str()))
                .filter(clients::client_id.eq(id.as_str())),
        )
        .set((clients::enabled.eq(enabled), clients::updated_at.eq(now.0)))
        .execute(&mut *conn)
        .map_err(db_error)?;
        Ok(changed > 0)
    }

    /// Deletes assertion ids and revocations that no longer matter: their assertions or
    /// tokens have expired. Returns how many rows went.
    pub fn purge_expired(&self, now: UnixTime) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        let assertions =
            diesel::delete(used_assertions::table.filter(used_assertions::expires_at.lt(now.0)))
                .execute(&mut *conn)
                .map_err(db_error)?;
        let revocations =
            diesel::delete(revoked_tokens::table.filter(revoked_tokens::expires_at.lt(now.0)))
                .execute(&mut *conn)
                .map_err(db_error)?;
        Ok(assertions + revocations + self.purge_expired_grants(now)?)
    }

    /// The realm's keys, newest first, retired ones included.
    pub fn list_keys(&self, realm: &RealmName) -> Result<Vec<KeyInfo>, StoreError> {
        let mut conn = self.conn()?;
        let rows: Vec<(String, String, String, bool, i64, Option<i64>)> = signing_keys::table
            .filter(signing_keys::realm.eq(realm.as_str()))
            .order(signing_keys::created_at.desc())
            .select((
                signing_keys::kid,
                signing_keys::key_use,
                signing_keys::alg,
                signing_keys::active,
                signing_keys::created_at,
                signing_keys::retired_at,
            ))
            .load(&mut *conn)
            .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(
                |(kid, key_use, alg, active, created_at, retired_at)| KeyInfo {
                    kid,
                    key_use: KeyUse::parse(&key_use),
                    alg,
                    active,
                    created_at: UnixTime(created_at),
                    retired_at: retired_at.map(UnixTime),
                },
            )
            .collect())
    }
}

impl IamStore for Store {
    fn realm(&self, name: &RealmName) -> Result<Option<Realm>, StoreError> {
        let mut conn = self.conn()?;
        let row: Option<(String, i64, String)> = realms::table
            .filter(realms::name.eq(name.as_str()))
            .select((
                realms::name,
                realms::token_lifetime_seconds,
                realms::signing_alg,
            ))
            .first(&mut *conn)
            .optional()
            .map_err(db_error)?;
        row.map(realm_from_row).transpose()
    }

    fn signing_keys(&self, realm: &RealmName, now: UnixTime) -> Result<Vec<StoredKey>, StoreError> {
        let mut conn = self.conn()?;
        let rows: Vec<(String, String, String, bool, String)> = signing_keys::table
            .filter(signing_keys::realm.eq(realm.as_str()))
            .filter(
                signing_keys::retired_at
                    .is_null()
                    .or(signing_keys::retired_at.gt(now.0)),
            )
            .order(signing_keys::created_at.desc())
            .select((
                signing_keys::kid,
                signing_keys::alg,
                signing_keys::private_key,
                signing_keys::active,
                signing_keys::key_use,
            ))
            .load(&mut *conn)
            .map_err(db_error)?;
        rows.into_iter()
            .map(|(kid, alg, key, active, key_use)| {
                Ok(StoredKey {
                    alg: Algorithm::parse(&alg).map_err(db_error)?,
                    pkcs8: tessera_iam::keywrap::unwrap(
                        self.kek.as_deref(),
                        realm.as_str(),
                        &kid,
                        &key,
                    )
                    .map_err(db_error)?,
                    active,
                    id_token: KeyUse::parse(&key_use) == KeyUse::IdToken,
                })
            })
            .collect()
    }

    fn client(&self, realm: &RealmName, id: &ClientId) -> Result<Option<Client>, StoreError> {
        let mut conn = self.conn()?;
        let row: Option<ClientRow> = clients::table
            .filter(clients::realm.eq(realm.as_str()))
            .filter(clients::client_id.eq(id.as_str()))
            .first(&mut *conn)
            .optional()
            .map_err(db_error)?;
        row.map(ClientRow::into_client).transpose()
    }

    fn account_partitions(
        &self,
        account: &AccountUrn,
    ) -> Result<Option<Vec<PartitionId>>, StoreError> {
        use tessera_aim::AccountStore as _;
        let account = self
            .account(account)
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(account.map(|a| a.partitions.into_iter().map(|p| p.id).collect()))
    }

    fn consume_assertion(
        &self,
        realm: &RealmName,
        client: &ClientId,
        jti: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let key = used_assertions::table
            .filter(used_assertions::realm.eq(realm.as_str()))
            .filter(used_assertions::client_id.eq(client.as_str()))
            .filter(used_assertions::jti.eq(jti));
        // A jti may be used again once its earlier assertion has expired.
        diesel::delete(key.filter(used_assertions::expires_at.lt(now.0)))
            .execute(&mut *conn)
            .map_err(db_error)?;
        let inserted = diesel::insert_into(used_assertions::table)
            .values((
                used_assertions::realm.eq(realm.as_str()),
                used_assertions::client_id.eq(client.as_str()),
                used_assertions::jti.eq(jti),
                used_assertions::expires_at.eq(expires_at.0),
            ))
            .execute(&mut *conn);
        match inserted {
            Ok(_) => Ok(true),
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => Ok(false),
            Err(e) => Err(db_error(e)),
        }
    }

    fn user_by_id(&self, realm: &RealmName, id: &str) -> Result<Option<User>, StoreError> {
        self.user_by_id_row(realm, id)
    }

    fn save_code(
        &self,
        realm: &RealmName,
        code_hash: &str,
        family: &str,
        record: &CodeRecord,
        expires_at: UnixTime,
    ) -> Result<(), StoreError> {
        self.insert_code(realm, code_hash, family, record, expires_at)
    }

    fn redeem_code(
        &self,
        realm: &RealmName,
        code_hash: &str,
        now: UnixTime,
    ) -> Result<Redeemed<CodeRecord>, StoreError> {
        self.take_code(realm, code_hash, now)
    }

    fn live_refresh(
        &self,
        realm: &RealmName,
        token_hash: &str,
        now: UnixTime,
    ) -> Result<Option<(RefreshRecord, String, i64)>, StoreError> {
        self.peek_refresh(realm, token_hash, now)
    }

    fn redeem_refresh(
        &self,
        realm: &RealmName,
        token_hash: &str,
        now: UnixTime,
    ) -> Result<Redeemed<RefreshRecord>, StoreError> {
        self.take_refresh(realm, token_hash, now)
    }

    fn record_issued(
        &self,
        realm: &RealmName,
        family: &str,
        claims: &AccessTokenClaims,
        refresh: Option<tessera_iam::service::NewRefresh<'_>>,
    ) -> Result<(), StoreError> {
        self.insert_issued(realm, family, claims, refresh)
    }

    fn revoke_family(
        &self,
        realm: &RealmName,
        family: &str,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.revoke_grant_family(realm, family, now)
    }

    fn session_active(&self, session_hash: &str, now: UnixTime) -> Result<bool, StoreError> {
        Ok(self.session(session_hash, now)?.is_some())
    }

    fn partition_exists(&self, partition: &str) -> Result<bool, StoreError> {
        Ok(self.account_of_partition(partition)?.is_some())
    }

    fn save_launch(
        &self,
        realm: &RealmName,
        launch_hash: &str,
        context: &LaunchContext,
        expires_at: UnixTime,
    ) -> Result<(), StoreError> {
        self.insert_launch(realm, launch_hash, context, expires_at)
    }

    fn launch(
        &self,
        realm: &RealmName,
        launch_hash: &str,
        now: UnixTime,
    ) -> Result<Option<LaunchContext>, StoreError> {
        self.live_launch(realm, launch_hash, now)
    }

    fn use_launch(
        &self,
        realm: &RealmName,
        launch_hash: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        self.mark_launch_used(realm, launch_hash, now)
    }
}

fn realm_from_row((name, lifetime, alg): (String, i64, String)) -> Result<Realm, StoreError> {
    Ok(Realm {
        name: RealmName::try_from(name).map_err(db_error)?,
        token_lifetime_seconds: lifetime,
        signing_alg: Algorithm::parse(&alg).map_err(db_error)?,
    })
}

/// A signing key as `tessera keys list` shows it (no private part).
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub kid: String,
    pub key_use: KeyUse,
    pub alg: String,
    pub active: bool,
    pub created_at: UnixTime,
    pub retired_at: Option<UnixTime>,
}

impl RevocationStore for Store {
    fn revoke(
        &self,
        realm: &RealmName,
        jti: &str,
        client: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let inserted = diesel::insert_into(revoked_tokens::table)
            .values((
                revoked_tokens::realm.eq(realm.as_str()),
                revoked_tokens::jti.eq(jti),
                revoked_tokens::client_id.eq(client),
                revoked_tokens::expires_at.eq(expires_at.0),
                revoked_tokens::revoked_at.eq(now.0),
            ))
            .execute(&mut *conn);
        match inserted {
            Ok(_) => Ok(()),
            // Revoked again: the newer time counts (a client disabled, enabled and
            // disabled again ends the tokens of its second life too).
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                diesel::update(
                    revoked_tokens::table
                        .filter(revoked_tokens::realm.eq(realm.as_str()))
                        .filter(revoked_tokens::jti.eq(jti)),
                )
                .set((
                    revoked_tokens::revoked_at.eq(now.0),
                    revoked_tokens::expires_at.eq(expires_at.0),
                ))
                .execute(&mut *conn)
                .map(drop)
                .map_err(db_error)
            }
            Err(e) => Err(db_error(e)),
        }
    }

    fn revocations(
        &self,
        realm: &RealmName,
        keys: &[String],
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let mut conn = self.conn()?;
        // Three keys a statement (a token has two or three), the last repeated to fill
        // it: its text is the same for every token, so each connection prepares it once
        // (diesel cannot cache an `IN` list, and SQLite's parser was 3% of an
        // introspection). Three seeks of the primary key joined by UNION ALL: SQLite turned
        // `jti = a OR jti = b OR jti = c` into an `IN` list, built a temporary b-tree of
        // the three keys for every query: 13% of a vault read's instructions. A key
        // repeated to fill the statement is found twice.
        let mut found = Vec::new();
        for chunk in keys.chunks(3) {
            let key = |i: usize| chunk.get(i).or(chunk.last()).map(String::as_str);
            let (Some(a), Some(b), Some(c)) = (key(0), key(1), key(2)) else {
                continue;
            };
            let seek = |key| {
                revoked_tokens::table
                    .filter(revoked_tokens::realm.eq(realm.as_str()))
                    .filter(revoked_tokens::jti.eq(key))
                    .select((revoked_tokens::jti, revoked_tokens::revoked_at))
            };
            let query = seek(a).union_all(seek(b)).union_all(seek(c));
            let rows: Vec<(String, i64)> =
                on_backend!(conn, |db| query.load(db)).map_err(db_error)?;
            found.extend(rows);
        }
        found.sort_unstable();
        found.dedup();
        Ok(found)
    }
}

#[derive(Queryable, Insertable)]
#[diesel(table_name = clients)]
struct ClientRow {
    realm: String,
    client_id: String,
    enabled: bool,
    auth_method: String,
    credential: String,
    scopes: String,
    partitions: String,
    person_ids: String,
    principal_id: Option<String>,
    principal_name: Option<String>,
    iua: String,
    created_at: i64,
    updated_at: i64,
    resource_servers: String,
    accounts: String,
    redirect_uris: String,
    launch_url: Option<String>,
}

impl ClientRow {
    fn from_client(client: &Client, now: UnixTime) -> Result<Self, StoreError> {
        let join = |items: Vec<String>| items.join(" ");
        Ok(Self {
            realm: client.realm.to_string(),
            client_id: client.client_id.to_string(),
            enabled: client.enabled,
            auth_method: client.auth.method_name().to_owned(),
            credential: serde_json::to_string(&client.auth).map_err(db_error)?,
            scopes: client.scopes.to_string(),
            partitions: join(client.partitions.iter().map(|p| p.to_string()).collect()),
            person_ids: join(client.person_ids.clone()),
            principal_id: client.principal_id.clone(),
            principal_name: client.principal_name.clone(),
            iua: serde_json::to_string(&client.iua).map_err(db_error)?,
            created_at: now.0,
            updated_at: now.0,
            resource_servers: join(client.resource_servers.clone()),
            accounts: join(client.accounts.clone()),
            redirect_uris: join(client.redirect_uris.clone()),
            launch_url: client.launch_url.clone(),
        })
    }

    fn into_client(self) -> Result<Client, StoreError> {
        let words = |text: &str| -> Vec<String> {
            text.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_owned)
                .collect()
        };
        Ok(Client {
            realm: RealmName::try_from(self.realm).map_err(db_error)?,
            client_id: ClientId::try_from(self.client_id).map_err(db_error)?,
            enabled: self.enabled,
            auth: serde_json::from_str::<ClientAuth>(&self.credential).map_err(db_error)?,
            scopes: ScopeSet::parse(&self.scopes).map_err(db_error)?,
            partitions: words(&self.partitions)
                .into_iter()
                .map(PartitionId::try_from)
                .collect::<Result<_, _>>()
                .map_err(db_error)?,
            principal_id: self.principal_id,
            principal_name: self.principal_name,
            person_ids: words(&self.person_ids),
            resource_servers: words(&self.resource_servers),
            accounts: words(&self.accounts),
            iua: serde_json::from_str::<IuaAttributes>(&self.iua).map_err(db_error)?,
            redirect_uris: words(&self.redirect_uris),
            launch_url: self.launch_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_with_its_cause_at_most_every_ten_seconds() {
        let errors = RateLimitedErrors::default();
        for _ in 0..5 {
            errors.handle_error(diesel::r2d2::Error::ConnectionError(
                diesel::ConnectionError::BadConnection("Connection refused".into()),
            ));
        }
        let (last, suppressed) = *errors.state.lock().unwrap();
        assert!(last.is_some(), "the first failure is logged");
        assert_eq!(
            suppressed, 4,
            "the next ones within 10 s are counted, not logged"
        );
    }

    #[test]
    fn revocations_are_found_under_any_number_of_keys() {
        let dir = std::env::temp_dir().join(format!("tessera-revocations-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(dir.join("t.db").to_str().unwrap(), 2).unwrap();
        let realm = RealmName::try_from("cara").unwrap();
        let other = RealmName::try_from("other").unwrap();
        for (i, key) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let at = UnixTime(100 + i as i64);
            store
                .revoke(&realm, key, "client", UnixTime(10_000), at)
                .unwrap();
        }
        store
            .revoke(&other, "x", "client", UnixTime(10_000), UnixTime(1))
            .unwrap();
        let found = |keys: &[&str]| {
            let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            let mut rows = store.revocations(&realm, &keys).unwrap();
            rows.sort();
            rows
        };
        let row = |key: &str, at: i64| (key.to_owned(), at);
        assert_eq!(found(&[]), vec![]);
        assert_eq!(found(&["b"]), vec![row("b", 101)]);
        assert_eq!(found(&["nothing", "c"]), vec![row("c", 102)]);
        assert_eq!(
            found(&["a", "nothing", "e"]),
            vec![row("a", 100), row("e", 104)]
        );
        // Past one statement's three keys, and a key of another realm not found.
        assert_eq!(
            found(&["x", "a", "b", "c", "d"]),
            vec![row("a", 100), row("b", 101), row("c", 102), row("d", 103)]
        );
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sqlite_reads_at_once_only_while_a_connection_is_idle() {
        let dir = std::env::temp_dir().join(format!("tessera-at-once-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(dir.join("t.db").to_str().unwrap(), 1).unwrap();
        assert!(store.reads_at_once());
        let held = store.conn().unwrap();
        assert!(
            !store.reads_at_once(),
            "the one connection is in use: the read would wait"
        );
        drop(held);
        assert!(store.reads_at_once());
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_database_that_is_down_is_reported_with_the_real_error() {
        // Nothing listens on port 1: the refusal itself must reach the operator, not
        // diesel's "Invalid connection url for multiconnection".
        let error = Store::open("postgres://postgres@127.0.0.1:1/tessera", 1)
            .expect_err("nothing listens on port 1");
        assert!(error.0.contains("Connection refused"), "{}", error.0);
        assert!(!error.0.contains("multiconnection"), "{}", error.0);
    }
}
