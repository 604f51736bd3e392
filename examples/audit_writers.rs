//! What serialises audit appends across instances sharing one database (issue 17):
//! N writers, each with a store (connection pool) of its own as a `tessera serve`
//! instance has, each appending transactions of B records for S seconds, as an
//! instance's journal drainer does. Prints the records and transactions per second of
//! all writers together. CHAINS is `own` (each writer appends to a chain of its own, as
//! instances do) or `shared` (all append to one chain: the single hash chain of the
//! trail before issue 17, whose head row serialised every append of the cluster).
//!
//!   cargo run --release --example audit_writers -- postgres://127.0.0.1/bench WRITERS BATCH SECONDS CHAINS
//!
//! Opening the store migrates the database: point it at a scratch one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_atna::{Event, Outcome, Record};
use tessera_types::UnixTime;

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("a database URL");
    let writers: usize = args.next().map_or(1, |a| a.parse().unwrap());
    let batch: usize = args.next().map_or(16, |a| a.parse().unwrap());
    let seconds: u64 = args.next().map_or(5, |a| a.parse().unwrap());
    let shared = match args.next().as_deref() {
        None | Some("own") => false,
        Some("shared") => true,
        Some(other) => panic!("CHAINS is own or shared, not {other}"),
    };
    let records = Arc::new(AtomicU64::new(0));
    let transactions = Arc::new(AtomicU64::new(0));
    let stores: Vec<_> = (0..writers)
        .map(|w| {
            let chain = if shared {
                "bench".to_owned()
            } else {
                format!("bench-{w}")
            };
            let store = tessera_store::Store::open(&url, 2)
                .unwrap()
                .with_audit_chain(&chain);
            (w, store)
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let threads: Vec<_> = stores
        .into_iter()
        .map(|(w, store)| {
            let (records, transactions) = (records.clone(), transactions.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < until {
                    let group: Vec<Record> = (0..batch)
                        .map(|_| {
                            n += 1;
                            record(w, n)
                        })
                        .collect();
                    store.append_audit(&group).unwrap();
                    records.fetch_add(batch as u64, Ordering::Relaxed);
                    transactions.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "writers {writers} batch {batch} {} chains: {:.0} records/s, {:.0} transactions/s",
        if shared { "shared" } else { "own" },
        records.load(Ordering::Relaxed) as f64 / elapsed,
        transactions.load(Ordering::Relaxed) as f64 / elapsed
    );
}

fn record(writer: usize, n: u64) -> Record {
    Record {
        id: format!(
            "{:08x}-{:04x}-4000-8000-{:012x}",
            std::process::id(),
            writer,
            n
        ),
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
    }
}
