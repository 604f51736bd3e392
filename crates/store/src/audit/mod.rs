//! The durable audit trail: a journal that makes records durable in groups (one disk
//! sync for many requests), appends that extend the hash chain in the database, chain
//! verification and export.

mod chain;
mod cpu;
mod deliveries;
mod drain;
mod journal;

pub use chain::{checkpoint_of, ChainReport, EventRef, Journaled};
pub use deliveries::Lease;
pub use journal::{AuditWriter, JournalStats};
