//! Micro-benchmark of the audit trail's durable append (SQLite, `synchronous = FULL`):
//! microseconds per record by transaction size, i.e. what grouping commits buys, in time
//! and in this thread's CPU (the rest is waiting for the disk). BATCH=N runs one size
//! (e.g. the drainer's, about a thousand, under callgrind).
//!
//!   cargo run --release --example audit_append

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::time::Instant;
use tessera_atna::{Event, Outcome, Record};
use tessera_types::UnixTime;

mod common;
use common::thread_cpu_ns;

fn main() {
    let dir = std::env::temp_dir().join(format!("audit-append-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = tessera_store::Store::open(&format!("sqlite://{}/t.db", dir.display()), 2).unwrap();
    let record = |i: usize| Record {
        id: format!("{i:08}-0000-4000-8000-000000000000"),
        recorded: UnixTime(1_800_000_000),
        observer: "https://127.0.0.1:8443/realms/cara".into(),
        client_address: Some("127.0.0.1".into()),
        outcome: Outcome::Success,
        event: Event::TokenRequest {
            client_id: Some("bench-tcu".into()),
            token_id: Some("3ZCRX77v-XmgKziJgvtSjg".into()),
            scope: Some("system/*.rs".into()),
            token_endpoint: "https://127.0.0.1:8443/realms/cara/protocol/openid-connect/token"
                .into(),
            request: "grant_type=client_credentials&client_id=bench-tcu".into(),
            error: None,
        },
    };
    let mut n = 0;
    let batches: Vec<usize> = match std::env::var("BATCH") {
        Ok(batch) => vec![batch.parse().unwrap()],
        Err(_) => vec![1, 10, 100, 1000],
    };
    for batch in batches {
        let t = Instant::now();
        let cpu = thread_cpu_ns();
        let rounds = (20_000 / batch).min(2000);
        for _ in 0..rounds {
            let records: Vec<Record> = (0..batch)
                .map(|_| {
                    n += 1;
                    record(n)
                })
                .collect();
            store.append_audit(&records).unwrap();
        }
        let records = (rounds * batch) as f64;
        println!(
            "batch {batch:4}: {:7.1} us per record, {:5.1} us of this thread's CPU",
            t.elapsed().as_micros() as f64 / records,
            (thread_cpu_ns() - cpu) as f64 / 1000.0 / records
        );
    }
    let t = Instant::now();
    for i in 0..2000 {
        std::hint::black_box(tessera_atna::canonical(&record(i)));
    }
    println!(
        "canonical json: {:5.1} us",
        t.elapsed().as_micros() as f64 / 2000.0
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
