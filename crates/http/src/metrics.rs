//! Prometheus metrics, kept in atomics: token requests by outcome and a latency
//! histogram. Rendered in the text exposition format at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tessera_store::JournalStats;

const OUTCOMES: [&str; 9] = [
    "issued",
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
    "server_error",
];

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

const INTROSPECTION_RESULTS: [&str; 3] = ["active", "inactive", "refused"];

#[derive(Debug, Default)]
pub struct Metrics {
    introspections: [AtomicU64; INTROSPECTION_RESULTS.len()],
    outcomes: [AtomicU64; OUTCOMES.len()],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Metrics {
    /// Records one token request. `outcome` is "issued" or an OAuth error code.
    pub fn token_request(&self, outcome: &str, elapsed: Duration) {
        let index = OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(OUTCOMES.len() - 1);
        self.outcomes[index].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            elapsed.as_micros().try_into().unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Records one introspection: "active", "inactive" or "refused".
    pub fn introspection(&self, result: &str) {
        if let Some(i) = INTROSPECTION_RESULTS.iter().position(|r| *r == result) {
            self.introspections[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP tessera_introspections_total Introspection requests by result."
        );
        let _ = writeln!(out, "# TYPE tessera_introspections_total counter");
        for (name, value) in INTROSPECTION_RESULTS.iter().zip(&self.introspections) {
            let _ = writeln!(
                out,
                "tessera_introspections_total{{result=\"{name}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tessera_token_requests_total Token endpoint requests by outcome."
        );
        let _ = writeln!(out, "# TYPE tessera_token_requests_total counter");
        for (name, value) in OUTCOMES.iter().zip(&self.outcomes) {
            let _ = writeln!(
                out,
                "tessera_token_requests_total{{outcome=\"{name}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tessera_token_request_duration_seconds Token endpoint latency."
        );
        let _ = writeln!(
            out,
            "# TYPE tessera_token_request_duration_seconds histogram"
        );
        for (bound, value) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "tessera_token_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "tessera_token_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "tessera_token_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "tessera_token_request_duration_seconds_count {count}");
        out
    }
}

/// The audit journal's counters: records made durable, the syncs that did it (their ratio
/// is the mean group size) and the time spent syncing; what the database does not hold
/// yet, what of it is in memory, and what was read back from disk.
pub fn render_journal(stats: &JournalStats) -> String {
    let mut out = String::new();
    let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    let metrics = [
        (
            "tessera_audit_journal_records_total",
            "Audit records made durable in the journal.",
            "counter",
            load(&stats.records) as f64,
        ),
        (
            "tessera_audit_journal_syncs_total",
            "Journal syncs (one per group of records).",
            "counter",
            load(&stats.syncs) as f64,
        ),
        (
            "tessera_audit_journal_sync_seconds_total",
            "Time spent in journal syncs.",
            "counter",
            load(&stats.sync_nanos) as f64 / 1e9,
        ),
        (
            "tessera_audit_journal_reread_records_total",
            "Audit records read back from the journal's disk, the database having fallen behind.",
            "counter",
            load(&stats.reread) as f64,
        ),
        (
            "tessera_audit_journal_replayed_records_total",
            "Audit records of instances now gone replayed from their journals at start.",
            "counter",
            load(&stats.replayed) as f64,
        ),
        (
            "tessera_audit_journal_undrained_records",
            "Audit records durable in the journal and not yet in the database (grows while the database is away).",
            "gauge",
            load(&stats.records).saturating_sub(load(&stats.drained)) as f64,
        ),
        (
            "tessera_audit_journal_in_memory_records",
            "Audit records held in memory for the database (bounded: the rest wait on the journal's disk).",
            "gauge",
            load(&stats.in_memory) as f64,
        ),
    ];
    for (name, help, kind, value) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.token_request("issued", Duration::from_micros(700));
        m.token_request("invalid_client", Duration::from_millis(30));
        let text = m.render();
        assert!(text.contains("tessera_token_requests_total{outcome=\"issued\"} 1"));
        assert!(text.contains("tessera_token_requests_total{outcome=\"invalid_client\"} 1"));
        assert!(text.contains("le=\"0.0005\"} 0"));
        assert!(text.contains("le=\"0.001\"} 1"));
        assert!(text.contains("le=\"0.05\"} 2"));
        assert!(text.contains("le=\"+Inf\"} 2"));
    }
}
