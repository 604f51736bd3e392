//! People and their grants: users, browser sessions, failed-login counters, consents,
//! authorization codes, refresh tokens and the access tokens of each grant family.
//! Session ids, codes and refresh tokens arrive here already hashed.

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tessera_iam::authorize::Reachable;
use tessera_iam::grant::{CodeRecord, Redeemed, RefreshRecord};
use tessera_iam::launch::LaunchContext;
use tessera_iam::service::NewRefresh;
use tessera_iam::token::AccessTokenClaims;
use tessera_iam::user::{Role, User};
use tessera_iam::StoreError;
use tessera_types::{AccountUrn, RealmName, ScopeSet, UnixTime};

use crate::schema::{
    authorization_codes, consents, family_tokens, launch_contexts, login_failures, realms,
    refresh_tokens, revoked_tokens, user_sessions, users,
};
use crate::{db_error, Store};

/// Why a user could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddUserError {
    #[error("user '{0}' already exists in this realm")]
    Exists(String),
    #[error("realm '{0}' does not exist")]
    NoRealm(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A logged-in browser session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id_hash: String,
    pub realm: RealmName,
    pub user_id: String,
    /// The synchronizer token every form of the session must carry back.
    pub csrf: String,
    pub auth_time: i64,
    pub expires_at: i64,
}

/// A remembered consent, as the user's account page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    pub client_id: String,
    pub scope: ScopeSet,
    pub granted_at: i64,
}

#[derive(Queryable)]
struct UserRow {
    realm: String,
    username: String,
    id: String,
    role: String,
    accounts: String,
    fhir_user: Option<String>,
    gln: Option<String>,
    enabled: bool,
    password_hash: String,
    _created_at: i64,
    _updated_at: i64,
}

impl UserRow {
    fn into_user(self) -> Result<User, StoreError> {
        Ok(User {
            realm: RealmName::try_from(self.realm).map_err(db_error)?,
            id: self.id,
            username: self.username,
            role: Role::parse(&self.role)
                .ok_or_else(|| StoreError(format!("unknown role '{}'", self.role)))?,
            accounts: self
                .accounts
                .split(' ')
                .filter(|a| !a.is_empty())
                .map(AccountUrn::try_from)
                .collect::<Result<_, _>>()
                .map_err(db_error)?,
            fhir_user: self.fhir_user,
            gln: self.gln,
            enabled: self.enabled,
            password_hash: self.password_hash,
        })
    }
}

fn unique_violation(err: &DieselError) -> bool {
    matches!(
        err,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

impl Store {
    pub fn insert_user(&self, user: &User, now: UnixTime) -> Result<(), AddUserError> {
        let mut conn = self.conn()?;
        let realm_exists = realms::table
            .filter(realms::name.eq(user.realm.as_str()))
            .count()
            .get_result::<i64>(&mut *conn)
            .map_err(db_error)?;
        if realm_exists == 0 {
            return Err(AddUserError::NoRealm(user.realm.to_string()));
        }
        let accounts: Vec<&str> = user.accounts.iter().map(|a| a.as_str()).collect();
        let inserted = diesel::insert_into(users::table)
            .values((
                users::realm.eq(user.realm.as_str()),
                users::username.eq(&user.username),
                users::id.eq(&user.id),
                users::role.eq(user.role.name()),
                users::accounts.eq(accounts.join(" ")),
                users::fhir_user.eq(&user.fhir_user),
                users::gln.eq(&user.gln),
                users::enabled.eq(user.enabled),
                users::password_hash.eq(&user.password_hash),
                users::created_at.eq(now.0),
                users::updated_at.eq(now.0),
            ))
            .execute(&mut *conn);
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if unique_violation(&e) => Err(AddUserError::Exists(user.username.clone())),
            Err(e) => Err(AddUserError::Store(db_error(e))),
        }
    }

    pub fn user(&self, realm: &RealmName, username: &str) -> Result<Option<User>, StoreError> {
        let mut conn = self.conn()?;
        let row: Option<UserRow> = users::table
            .filter(users::realm.eq(realm.as_str()))
            .filter(users::username.eq(username))
            .first(&mut *conn)
            .optional()
            .map_err(db_error)?;
        row.map(UserRow::into_user).transpose()
    }

    pub fn list_users(&self, realm: &RealmName) -> Result<Vec<User>, StoreError> {
        let mut conn = self.conn()?;
        let rows: Vec<UserRow> = users::table
            .filter(users::realm.eq(realm.as_str()))
            .order(users::username.asc())
            .load(&mut *conn)
            .map_err(db_error)?;
        rows.into_iter().map(UserRow::into_user).collect()
    }

    /// Enables or disables a user; disabling also ends their sessions. Returns false if
    /// there is no such user.
    pub fn set_user_enabled(
        &self,
        realm: &RealmName,
        username: &str,
        enabled: bool,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let Some(user) = self.user(realm, username)? else {
            return Ok(false);
        };
        let mut conn = self.conn()?;
        diesel::update(
            users::table
                .filter(users::realm.eq(realm.as_str()))
                .filter(users::username.eq(username)),
        )
        .set((users::enabled.eq(enabled), users::updated_at.eq(now.0)))
        .execute(&mut *conn)
        .map_err(db_error)?;
        if !enabled {
            self.end_user_sessions(realm, &user.id)?;
        }
        Ok(true)
    }

    /// Replaces a user's password hash and ends their sessions.
    pub fn set_password(
        &self,
        realm: &RealmName,
        username: &str,
        password_hash: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let Some(user) = self.user(realm, username)? else {
            return Ok(false);
        };
        let mut conn = self.conn()?;
        diesel::update(
            users::table
                .filter(users::realm.eq(realm.as_str()))
                .filter(users::username.eq(username)),
        )
        .set((
            users::password_hash.eq(password_hash),
            users::updated_at.eq(now.0),
        ))
        .execute(&mut *conn)
        .map_err(db_error)?;
        self.end_user_sessions(realm, &user.id)?;
        Ok(true)
    }

    fn end_user_sessions(&self, realm: &RealmName, user_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        diesel::delete(
            user_sessions::table
                .filter(user_sessions::realm.eq(realm.as_str()))
                .filter(user_sessions::user_id.eq(user_id)),
        )
        .execute(&mut *conn)
        .map_err(db_error)?;
        Ok(())
    }

    /// The partitions a user reaches through the accounts of their registration.
    pub fn reachable(&self, user: &User) -> Result<Vec<Reachable>, StoreError> {
        use tessera_aim::AccountStore as _;
        let mut reachable = Vec::new();
        for urn in &user.accounts {
            let Some(account) = self.account(urn).map_err(|e| StoreError(e.to_string()))? else {
                continue;
            };
            for partition in account.partitions {
                reachable.push(Reachable {
                    partition: partition.id,
                    account: urn.clone(),
                });
            }
        }
        Ok(reachable)
    }

    /// The id of a partition's Patient resource (SMART's `patient` launch context): the
    /// one Patient a patient's partition holds; if it holds several, the one created
    /// first. `None` while the partition has no Patient.
    pub fn partition_patient(&self, partition: &str) -> Result<Option<String>, StoreError> {
        use crate::schema::{fhir_resources, fhir_versions};
        let mut conn = self.conn()?;
        let live: Vec<String> = fhir_resources::table
            .filter(fhir_resources::partition_id.eq(partition))
            .filter(fhir_resources::resource_type.eq("Patient"))
            .filter(fhir_resources::deleted.eq(false))
            .select(fhir_resources::id)
            .load(&mut *conn)
            .map_err(db_error)?;
        if live.len() < 2 {
            return Ok(live.into_iter().next());
        }
        let first: Option<String> = fhir_versions::table
            .filter(fhir_versions::partition_id.eq(partition))
            .filter(fhir_versions::resource_type.eq("Patient"))
            .filter(fhir_versions::version.eq(1))
            .filter(fhir_versions::id.eq_any(&live))
            .order((fhir_versions::last_updated.asc(), fhir_versions::id.asc()))
            .select(fhir_versions::id)
            .first(&mut *conn)
            .optional()
            .map_err(db_error)?;
        Ok(first)
    }

    /// A person's name as the partition's Patient resource gives it (`given family`),
    /// for the patient picker; `None` without a Patient or a name.
    pub fn partition_patient_name(&self, partition: &str) -> Result<Option<String>, StoreError> {
        use crate::schema::fhir_resources;
        let Some(id) = self.partition_patient(partition)? else {
            return Ok(None);
        };
        let mut conn = self.conn()?;
        let content: Option<String> = fhir_resources::table
            .filter(fhir_resources::partition_id.eq(partition))
            .filter(fhir_resources::resource_type.eq("Patient"))
            .filter(fhir_resources::id.eq(&id))
            .select(fhir_resources::content)
            .first(&mut *conn)
            .optional()
            .map_err(db_error)?;
        let Some(resource) =
            content.and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
        else {
            return Ok(None);
        };
        let name = &resource["name"][0];
        let mut parts: Vec<&str> = name["given"]
            .as_array()
            .map(|g| g.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        parts.extend(name["family"].as_str());
        Ok((!parts.is_empty()).then(|| parts.join(" ")))
    }

    /// The origins of every registered redirect URI, in all realms (CORS).
    pub fn redirect_origins(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        use crate::schema::clients;
        let mut conn = self.conn()?;
        let lists: Vec<String> = clients::table
            .filter(clients::enabled.eq(true))
            .filter(clients::redirect_uris.ne(""))
            .select(clients::redirect_uris)
            .load(&mut *conn)
            .map_err(db_error)?;
        Ok(lists
            .iter()
            .flat_map(|list| list.split(' '))
            .filter_map(tessera_iam::client::origin_of)
            .collect())
    }

    pub fn create_session(&self, session: &Session) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        diesel::insert_into(user_sessions::table)
            .values((
                user_sessions::id_hash.eq(&session.id_hash),
                user_sessions::realm.eq(session.realm.as_str()),
                user_sessions::user_id.eq(&session.user_id),
                user_sessions::csrf.eq(&session.csrf),
                user_sessions::auth_time.eq(session.auth_time),
                user_sessions::expires_at.eq(session.expires_at),
            ))
            .execute(&mut *conn)
            .map_err(db_error)?;
        Ok(())
    }

    /// The session with this id hash, if it has not expired.
    pub fn session(&self, id_hash: &str, now: UnixTime) -> Result<Option<Session>, StoreError> {
        let mut conn = self.conn()?;
        let row: Option<(String, String, String, String, i64, i64)> = user_sessions::table
            .filter(user_sessions::id_hash.eq(id_hash))
            .filter(user_sessions::expires_at.gt(now.0))
            .first(&mut *conn)
            .optional()
            .map_err(db_error)?;
        row.map(|(id_hash, realm, user_id, csrf, auth_time, expires_at)| {
            Ok(Session {
                id_hash,
                realm: RealmName::try_from(realm).map_err(db_error)?,
                user_id,
                csrf,
                auth_time,
                expires_at,
            })
        })
        .transpose()
    }

    pub fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        diesel::delete(user_sessions::table.filter(user_sessions::id_hash.eq(id_hash)))
            .execute(&mut *conn)
            .map_err(db_error)?;
        Ok(())
    }

    /// (failures, time of the last one) for each throttle key that has any.
    pub fn login_failures(&self, keys: &[String]) -> Result<Vec<(i64, i64)>, StoreError> {
        let mut conn = self.conn()?;
        login_failures::table
            .filter(login_failures::throttle_key.eq_any(keys))
            .select((login_failures::failures, login_failures::last_at))
            .load(&mut *conn)
            .map_err(db_error)
    }

    /// Counts one more failure for each key (starting again after `reset_after` quiet
    /// seconds).
    pub fn record_login_failure(
        &self,
        keys: &[String],
        now: UnixTime,
        reset_after: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        for key in keys {
            let row = login_failures::table.filter(login_failures::throttle_key.eq(key));
            let previous: Option<(i64, i64)> = row
                .select((login_failures::failures, login_failures::last_at))
                .first(&mut *conn)
                .optional()
                .map_err(db_error)?;
            let failures = match previous {
                Some((n, last)) if now.0 - last < reset_after => n + 1,
                _ => 1,
            };
            let updated = diesel::update(row)
                .set((
                    login_failures::failures.eq(failures),
                    login_failures::last_at.eq(now.0),
                ))
                .execute(&mut *conn)
                .map_err(db_error)?;
            if updated == 0 {
                let inserted = diesel::insert_into(login_failures::table)
                    .values((
                        login_failures::throttle_key.eq(key),
                        login_failures::failures.eq(failures),
                        login_failures::last_at.eq(now.0),
                    ))
                    .execute(&mut *conn);
                // A concurrent failure inserted the row first: it counted for both.
                match inserted {
                    Ok(_) => {}
                    Err(e) if unique_violation(&e) => {}
                    Err(e) => return Err(db_error(e)),
                }
            }
        }
        Ok(())
    }

    pub fn clear_login_failures(&self, keys: &[String]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        diesel::delete(login_failures::table.filter(login_failures::throttle_key.eq_any(keys)))
            .execute(&mut *conn)
            .map_err(db_error)?;
        Ok(())
    }

    pub fn consent(
        &self,
        realm: &RealmName,
        user_id: &str,
        client_id: &str,
    ) -> Result<Option<ScopeSet>, StoreError> {
        let mut conn = self.conn()?;
        let scope: Option<String> = consents::table
            .filter(consents::realm.eq(realm.as_str()))
            .filter(consents::user_id.eq(user_id))
            .filter(consents::client_id.eq(client_id))
            .select(consents::scope)
            .first(&mut *conn)
            .optional()
            .map_err(db_error)?;
        scope
            .map(|s| ScopeSet::parse(&s).map_err(db_error))
            .transpose()
    }

    /// Remembers what the user granted the client (replacing an earlier consent).
    pub fn save_consent(
        &self,
        realm: &RealmName,
        user_id: &str,
        client_id: &str,
        scope: &ScopeSet,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            diesel::delete(
                consents::table
                    .filter(consents::realm.eq(realm.as_str()))
                    .filter(consents::user_id.eq(user_id))
                    .filter(consents::client_id.eq(client_id)),
            )
            .execute(conn)?;
            diesel::insert_into(consents::table)
                .values((
                    consents::realm.eq(realm.as_str()),
                    consents::user_id.eq(user_id),
                    consents::client_id.eq(client_id),
                    consents::scope.eq(scope.to_string()),
                    consents::granted_at.eq(now.0),
                ))
                .execute(conn)
                .map(|_| ())
        })
        .map_err(db_error)
    }

    pub fn consents(&self, realm: &RealmName, user_id: &str) -> Result<Vec<Consent>, StoreError> {
        let mut conn = self.conn()?;
        let rows: Vec<(String, String, i64)> = consents::table
            .filter(consents::realm.eq(realm.as_str()))
            .filter(consents::user_id.eq(user_id))
            .order(consents::client_id.asc())
            .select((consents::client_id, consents::scope, consents::granted_at))
            .load(&mut *conn)
            .map_err(db_error)?;
        rows.into_iter()
            .map(|(client_id, scope, granted_at)| {
                Ok(Consent {
                    client_id,
                    scope: ScopeSet::parse(&scope).map_err(db_error)?,
                    granted_at,
                })
            })
            .collect()
    }

    /// Withdraws a consent: the app must ask again, and the refresh tokens the user
    /// gave it stop working. Returns false if there was none.
    pub fn revoke_consent(
        &self,
        realm: &RealmName,
        user_id: &str,
        client_id: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let removed = diesel::delete(
            consents::table
                .filter(consents::realm.eq(realm.as_str()))
                .filter(consents::user_id.eq(user_id))
                .filter(consents::client_id.eq(client_id)),
        )
        .execute(&mut *conn)
        .map_err(db_error)?;
        let live: Vec<(String, String)> = refresh_tokens::table
            .filter(refresh_tokens::realm.eq(realm.as_str()))
            .filter(refresh_tokens::revoked.eq(false))
            .filter(refresh_tokens::expires_at.gt(now.0))
            .select((refresh_tokens::family, refresh_tokens::record))
            .load(&mut *conn)
            .map_err(db_error)?;
        drop(conn);
        for (family, record) in live {
            let Ok(record) = serde_json::from_str::<RefreshRecord>(&record) else {
                continue;
            };
            if record.grant.user_id == user_id && record.grant.client_id == client_id {
                tessera_iam::IamStore::revoke_family(self, realm, &family, now)?;
            }
        }
        Ok(removed > 0)
    }

    /// Deletes expired sessions, codes, refresh tokens and family records.
    pub(crate) fn purge_expired_grants(&self, now: UnixTime) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        let mut purged = 0;
        purged += diesel::delete(user_sessions::table.filter(user_sessions::expires_at.lt(now.0)))
            .execute(&mut *conn)
            .map_err(db_error)?;
        purged += diesel::delete(
            authorization_codes::table.filter(authorization_codes::expires_at.lt(now.0)),
        )
        .execute(&mut *conn)
        .map_err(db_error)?;
        purged +=
            diesel::delete(refresh_tokens::table.filter(refresh_tokens::expires_at.lt(now.0)))
                .execute(&mut *conn)
                .map_err(db_error)?;
        purged += diesel::delete(family_tokens::table.filter(family_tokens::expires_at.lt(now.0)))
            .execute(&mut *conn)
            .map_err(db_error)?;
        purged +=
            diesel::delete(launch_contexts::table.filter(launch_contexts::expires_at.lt(now.0)))
                .execute(&mut *conn)
                .map_err(db_error)?;
        Ok(purged)
    }

    pub(crate) fn user_by_id_row(
        &self,
        realm: &RealmName,
        id: &str,
    ) -> Result<Option<User>, StoreError> {
        let mut conn = self.conn()?;
        let row: Option<UserRow> = users::table
            .filter(users::realm.eq(realm.as_str()))
            .filter(users::id.eq(id))
            .first(&mut *conn)
            .optional()
            .map_err(db_error)?;
        row.map(UserRow::into_user).transpose()
    }

    pub(crate) fn insert_code(
        &self,
        realm: &RealmName,
        code_hash: &str,
        family: &str,
        record: &CodeRecord,
        expires_at: UnixTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        diesel::insert_into(authorization_codes::table)
            .values((
                authorization_codes::code_hash.eq(code_hash),
                authorization_codes::realm.eq(realm.as_str()),
                authorization_codes::family.eq(family),
                authorization_codes::record.eq(serde_json::to_string(record).map_err(db_error)?),
                authorization_codes::expires_at.eq(expires_at.0),
            ))
            .execute(&mut *conn)
            .map_err(db_error)?;
        Ok(())
    }

    pub(crate) fn take_code(
        &self,
        realm: &RealmName,
        code_hash: &str,
        now: UnixTime,
    ) -> Result<Redeemed<CodeRecord>, StoreError> {
        let mut conn = self.conn()?;
        let key = authorization_codes::table
            .filter(authorization_codes::code_hash.eq(code_hash))
            .filter(authorization_codes::realm.eq(realm.as_str()));
        // One UPDATE decides who gets the code, on every instance sharing the database.
        let claimed = diesel::update(key.filter(authorization_codes::used_at.is_null()))
            .set(authorization_codes::used_at.eq(now.0))
            .execute(&mut *conn)
            .map_err(db_error)?;
        let row: Option<(String, String, i64)> = key
            .select((
                authorization_codes::family,
                authorization_codes::record,
                authorization_codes::expires_at,
            ))
            .first(&mut *conn)
            .optional()
            .map_err(db_error)?;
        Ok(match row {
            None => Redeemed::Unknown,
            Some((family, _, _)) if claimed == 0 => Redeemed::Spent { family },
            Some((family, record, expires_at)) => Redeemed::Fresh {
                record: serde_json::from_str(&record).map_err(db_error)?,
                family,
                expires_at,
            },
        })
    }

    pub(crate) fn peek_refresh(
        &self,
        realm: &RealmName,
        token_hash: &str,
        now: UnixTime,
    ) -> Result<Option<(RefreshRecord, String, i64)>, StoreError> {
        let mut conn = self.conn()?;
        let row: Option<(String, String, i64)> = refresh_tokens::table
            .filter(refresh_tokens::token_hash.eq(token_hash))
            .filter(refresh_tokens::realm.eq(realm.as_str()))
            .filter(refresh_tokens::used_at.is_null())
            .filter(refresh_tokens::revoked.eq(false))
            .filter(refresh_tokens::expires_at.gt(now.0))
            .select((
                refresh_tokens::record,
                refresh_tokens::family,
                refresh_tokens::expires_at,
            ))
            .first(&mut *conn)
            .optional()
            .map_err(db_error)?;
        row.map(|(record, family, expires_at)| {
            Ok((
                serde_json::from_str(&record).map_err(db_error)?,
                family,
                expires_at,
            ))
        })
        .transpose()
    }

    pub(crate) fn take_refresh(
        &self,
        realm: &RealmName,
        token_hash: &str,
        now: UnixTime,
    ) -> Result<Redeemed<RefreshRecord>, StoreError> {
        let mut conn = self.conn()?;
        let key = refresh_tokens::table
            .filter(refresh_tokens::token_hash.eq(token_hash))
            .filter(refresh_tokens::realm.eq(realm.as_str()));
        let claimed = diesel::update(
            key.filter(refresh_tokens::used_at.is_null())
                .filter(refresh_tokens::revoked.eq(false)),
        )
        .set(refresh_tokens::used_at.eq(now.0))
        .execute(&mut *conn)
        .map_err(db_error)?;
        let row: Option<(String, String, i64)> = key
            .select((
                refresh_tokens::family,
                refresh_tokens::record,
                refresh_tokens::expires_at,
            ))
            .first(&mut *conn)
            .optional()
            .map_err(db_error)?;
        Ok(match row {
            None => Redeemed::Unknown,
            Some((family, _, _)) if claimed == 0 => Redeemed::Spent { family },
            Some((family, record, expires_at)) => Redeemed::Fresh {
                record: serde_json::from_str(&record).map_err(db_error)?,
                family,
                expires_at,
            },
        })
    }

    pub(crate) fn insert_launch(
        &self,
        realm: &RealmName,
        launch_hash: &str,
        context: &LaunchContext,
        expires_at: UnixTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        diesel::insert_into(launch_contexts::table)
            .values((
                launch_contexts::launch_hash.eq(launch_hash),
                launch_contexts::realm.eq(realm.as_str()),
                launch_contexts::client_id.eq(&context.client_id),
                launch_contexts::record.eq(serde_json::to_string(context).map_err(db_error)?),
                launch_contexts::expires_at.eq(expires_at.0),
            ))
            .execute(&mut *conn)
            .map_err(db_error)?;
        Ok(())
    }

    pub(crate) fn live_launch(
        &self,
        realm: &RealmName,
        launch_hash: &str,
        now: UnixTime,
    ) -> Result<Option<LaunchContext>, StoreError> {
        let mut conn = self.conn()?;
        let record: Option<String> = launch_contexts::table
            .filter(launch_contexts::launch_hash.eq(launch_hash))
            .filter(launch_contexts::realm.eq(realm.as_str()))
            .filter(launch_contexts::used_at.is_null())
            .filter(launch_contexts::expires_at.gt(now.0))
            .select(launch_contexts::record)
            .first(&mut *conn)
            .optional()
            .map_err(db_error)?;
        record
            .map(|r| serde_json::from_str(&r).map_err(db_error))
            .transpose()
    }

    pub(crate) fn mark_launch_used(
        &self,
        realm: &RealmName,
        launch_hash: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let claimed = diesel::update(
            launch_contexts::table
                .filter(launch_contexts::launch_hash.eq(launch_hash))
                .filter(launch_contexts::realm.eq(realm.as_str()))
                .filter(launch_contexts::used_at.is_null())
                .filter(launch_contexts::expires_at.gt(now.0)),
        )
        .set(launch_contexts::used_at.eq(now.0))
        .execute(&mut *conn)
        .map_err(db_error)?;
        Ok(claimed == 1)
    }

    /// The access token of a family and its new refresh token, in one transaction (one
    /// sync on SQLite instead of two).
    pub(crate) fn insert_issued(
        &self,
        realm: &RealmName,
        family: &str,
        claims: &AccessTokenClaims,
        refresh: Option<NewRefresh<'_>>,
    ) -> Result<(), StoreError> {
        let record = refresh
            .map(|r| serde_json::to_string(r.record))
            .transpose()
            .map_err(db_error)?;
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            diesel::insert_into(family_tokens::table)
                .values((
                    family_tokens::family.eq(family),
                    family_tokens::jti.eq(&claims.jti),
                    family_tokens::realm.eq(realm.as_str()),
                    family_tokens::client_id.eq(&claims.client_id),
                    family_tokens::expires_at.eq(claims.exp),
                ))
                .execute(conn)?;
            if let (Some(refresh), Some(record)) = (refresh, &record) {
                diesel::insert_into(refresh_tokens::table)
                    .values((
                        refresh_tokens::token_hash.eq(refresh.token_hash),
                        refresh_tokens::realm.eq(realm.as_str()),
                        refresh_tokens::family.eq(family),
                        refresh_tokens::record.eq(record),
                        refresh_tokens::expires_at.eq(refresh.expires_at.0),
                        refresh_tokens::revoked.eq(false),
                    ))
                    .execute(conn)?;
            }
            Ok::<_, DieselError>(())
        })
        .map_err(db_error)
    }

    /// Revokes a family's refresh tokens and lists its access tokens as revoked, in one
    /// transaction.
    pub(crate) fn revoke_grant_family(
        &self,
        realm: &RealmName,
        family: &str,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            diesel::update(refresh_tokens::table.filter(refresh_tokens::family.eq(family)))
                .set(refresh_tokens::revoked.eq(true))
                .execute(conn)?;
            let tokens: Vec<(String, String, i64)> = family_tokens::table
                .filter(family_tokens::family.eq(family))
                .filter(family_tokens::expires_at.gt(now.0))
                .select((
                    family_tokens::jti,
                    family_tokens::client_id,
                    family_tokens::expires_at,
                ))
                .load(conn)?;
            // Checked first: on PostgreSQL a failed INSERT would abort the transaction.
            let jtis: Vec<&str> = tokens.iter().map(|(jti, _, _)| jti.as_str()).collect();
            let already: Vec<String> = revoked_tokens::table
                .filter(revoked_tokens::realm.eq(realm.as_str()))
                .filter(revoked_tokens::jti.eq_any(&jtis))
                .select(revoked_tokens::jti)
                .load(conn)?;
            for (jti, client_id, expires_at) in &tokens {
                if already.contains(jti) {
                    continue;
                }
                diesel::insert_into(revoked_tokens::table)
                    .values((
                        revoked_tokens::realm.eq(realm.as_str()),
                        revoked_tokens::jti.eq(jti),
                        revoked_tokens::client_id.eq(client_id),
                        revoked_tokens::expires_at.eq(expires_at),
                        revoked_tokens::revoked_at.eq(now.0),
                    ))
                    .execute(conn)?;
            }
            Ok::<_, DieselError>(())
        })
        .map_err(db_error)
    }
}
