//! IAM: the ITI-71 authorization server. Client registrations and how clients
//! authenticate (mutual TLS, private_key_jwt, client secret), token minting with the
//! IUA extension, signing keys and their JWKS, and ITI-103 metadata.
//!
//! This crate must not depend on a web framework, a database library or TLS: HTTP
//! handlers and the store call into it, and it reads no clock (time is a parameter).

#![forbid(unsafe_code)]

pub mod authorize;
pub mod client;
pub mod error;
pub mod grant;
pub mod jose;
pub mod keywrap;
pub mod launch;
pub mod metadata;
pub mod pem;
pub mod registration;
pub mod request;
pub mod service;
pub mod token;
pub mod user;

pub use error::{OAuthError, OAuthErrorCode, StoreError};
pub use service::{
    Authenticated, IamSettings, IamStore, InvalidToken, Issued, JwksFetcher, Realm, RealmState,
    StoredKey, TokenService, VerifiedToken,
};

#[cfg(test)]
mod service_tests;
