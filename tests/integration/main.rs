//! The integration suite: ONE test binary (each extra file under tests/ would be a
//! separate link of the whole program; add modules here instead).
//!
//! Every test gets its own directory, set up by the real `tessera init`, its own
//! database, and the real server on a free port with real certificates. The database
//! is SQLite unless `TESSERA_TEST_DATABASE=postgres`, in which case each test creates
//! and drops its own PostgreSQL database (`TESSERA_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`).

// In tests a panic is the failure report; the crate-wide denials are for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod aim;
mod apps;
mod audit;
mod cli;
mod console;
mod discovery;
mod introspection;
mod repository;
mod syslog;
mod token_jwt;
mod token_mtls;
mod token_secret;
mod vault;
