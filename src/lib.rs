//! The `tessera` program: command line, configuration, development PKI, and the wiring
//! that assembles the crates into a server. `main.rs` only calls [`cli::run`]; the
//! integration tests call the same functions in-process.

#![forbid(unsafe_code)]

pub mod accounts;
pub mod cli;
pub mod config;
pub mod pki;
pub mod serve;
mod users;
