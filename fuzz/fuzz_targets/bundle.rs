//! The Bundle parser: batch and transaction Bundles posted to a partition of a real
//! store, with a token that may write Observations and read everything.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{harness, BASE, NOW, PARTITION};
use tessera_vault::authz::Grant;
use tessera_vault::Ctx;

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let partitions = [PARTITION.to_owned()];
    let ctx = Ctx {
        grant: Grant {
            partitions: &partitions,
            scope: "system/*.rs system/Observation.cruds system/Patient.c",
        },
        partition: PARTITION,
        base: BASE,
        now_ms: NOW.0 * 1000,
    };
    let mut n = 0u64;
    let mut ids = || {
        n += 1;
        format!("fuzz-{n}")
    };
    let _ = h.vault.batch(&h.store, &ctx, data, &mut ids);
});
