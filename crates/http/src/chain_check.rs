//! The console's chain check: `audit verify` run in the background, one at a time per
//! server, so a check of millions of events outlives the request that started it and
//! its progress can be watched from the trail page.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tessera_store::{ChainReport, Store};
use tessera_types::UnixTime;

use crate::checkpoint::CheckpointVerifier;

/// The latest check of this server, if any.
pub struct ChainCheck {
    latest: Mutex<Option<Arc<Run>>>,
    /// Checks the signatures of the trail's checkpoints.
    checkpoints: Arc<CheckpointVerifier>,
}

/// One check: who started it and when, how far it got, how it ended.
pub struct Run {
    pub started: UnixTime,
    pub by: String,
    /// The trail's length when it started.
    pub of: i64,
    checked: AtomicU64,
    ended: Mutex<Option<(UnixTime, Result<ChainReport, String>)>>,
}

impl Run {
    /// Events verified so far.
    pub fn checked(&self) -> u64 {
        self.checked.load(Ordering::Relaxed)
    }

    /// When it ended and its report (or why it could not finish); `None` while it runs.
    pub fn ended(&self) -> Option<(UnixTime, Result<ChainReport, String>)> {
        self.ended.lock().ok()?.clone()
    }
}

impl ChainCheck {
    pub fn new(checkpoints: CheckpointVerifier) -> Self {
        Self {
            latest: Mutex::new(None),
            checkpoints: Arc::new(checkpoints),
        }
    }

    /// The latest check, running or ended.
    pub fn latest(&self) -> Option<Arc<Run>> {
        self.latest.lock().ok()?.clone()
    }

    /// Starts a check of `store` unless one is running; either way, the running one.
    /// `clock` dates its end.
    pub fn start(
        &self,
        store: &Store,
        by: String,
        of: i64,
        at: UnixTime,
        clock: fn() -> UnixTime,
    ) -> Arc<Run> {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(run) = latest.as_ref().filter(|r| r.ended().is_none()) {
            return run.clone();
        }
        let run = Arc::new(Run {
            started: at,
            by,
            of,
            checked: AtomicU64::new(0),
            ended: Mutex::new(None),
        });
        *latest = Some(run.clone());
        let (store, job, checkpoints) = (store.clone(), run.clone(), self.checkpoints.clone());
        let started = std::thread::Builder::new()
            .name("audit-verify".into())
            .spawn(move || {
                let report = store
                    .verify_audit_chain(&|signed| checkpoints.verify(signed), &mut |n| {
                        job.checked.store(n, Ordering::Relaxed)
                    })
                    .map_err(|e| e.to_string());
                if let Ok(report) = &report {
                    job.checked.store(report.checked, Ordering::Relaxed);
                }
                if let Ok(mut ended) = job.ended.lock() {
                    *ended = Some((clock(), report));
                }
            });
        if let Err(e) = started {
            if let Ok(mut ended) = run.ended.lock() {
                *ended = Some((clock(), Err(format!("cannot start the check: {e}"))));
            }
        }
        run
    }
}
