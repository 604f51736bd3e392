//! Every id Tessera makes, from the system RNG (and, for time-ordered ids, the clock):
//! the one place the edge brings randomness to `tessera_types`' UUID formats.

use ring::rand::{SecureRandom as _, SystemRandom};

/// Why an id could not be made: the system RNG failed.
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct NoRandomness;

fn random<const N: usize>() -> Result<[u8; N], NoRandomness> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| NoRandomness)?;
    Ok(bytes)
}

/// A random version 4 UUID: ids that must not tell when they were made (accounts,
/// users).
pub fn random_id() -> Result<String, NoRandomness> {
    Ok(tessera_types::uuid_v4(random()?))
}

/// A version 7 UUID made now: audit events and FHIR resources, whose ids are the keys
/// of large indexes (made in order, they are inserted at the indexes' end). They tell
/// the millisecond they were made, which their record or `meta.lastUpdated` tells too.
pub fn time_ordered_id() -> Result<String, NoRandomness> {
    let ms = u64::try_from(crate::now_ms()).unwrap_or_default();
    Ok(tessera_types::uuid_v7(ms, random()?))
}
