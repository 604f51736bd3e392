//! Whether the cores this process may run on are saturated. The journal lets a group of
//! records gather before its sync only then: a sync costs CPU time that requests need
//! when no core is idle, and with a core to spare a wait would only add latency (and,
//! with fewer clients than the group waits for, leave the server idle meanwhile).
//!
//! Read from Linux's `/proc` (the cores in `Cpus_allowed_list`, their times in
//! `/proc/stat`); elsewhere, or where those cannot be read, the cores count as never
//! saturated and every group is written as soon as the previous sync ends. A CPU quota
//! (a container's `cpu.max`) is not seen: such a process counts as saturated only when
//! its cores are.

use std::time::{Duration, Instant};

/// How often the cores' times are read again (`/proc/stat` counts in 10 ms ticks).
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The share of the cores' time spent working at which they count as saturated, and
/// below which they no longer do once they were: a journal that waits spends less CPU
/// on syncs, which alone must not end the waiting.
const SATURATED: f64 = 0.9;
const NO_LONGER_SATURATED: f64 = 0.75;

/// The cores' recent load, read again at most every [`SAMPLE_EVERY`].
pub(super) struct CpuLoad {
    /// The cores this process may run on; `None` where that cannot be read.
    cpus: Option<Vec<usize>>,
    last: Option<Times>,
    next_sample: Instant,
    saturated: bool,
}

/// Clock ticks the cores have spent since boot: working, and in all.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Times {
    working: u64,
    total: u64,
}

impl CpuLoad {
    pub(super) fn new(now: Instant) -> Self {
        let cpus = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| allowed_cpus(&status));
        Self {
            cpus,
            last: None,
            next_sample: now,
            saturated: false,
        }
    }

    /// Whether the cores were saturated over the last sample; `now` decides whether the
    /// sample is old enough to be taken again.
    pub(super) fn saturated(&mut self, now: Instant) -> bool {
        if now >= self.next_sample {
            self.next_sample = now + SAMPLE_EVERY;
            let times = self.cpus.as_deref().and_then(|cpus| {
                let stat = std::fs::read_to_string("/proc/stat").ok()?;
                cpu_times(&stat, cpus)
            });
            self.saturated = match (self.last, times) {
                (Some(before), Some(after)) => saturated(before, after, self.saturated),
                _ => false,
            };
            self.last = times;
        }
        self.saturated
    }
}

/// The cores of `Cpus_allowed_list` in `/proc/self/status` (e.g. `0-3,8`).
fn allowed_cpus(status: &str) -> Option<Vec<usize>> {
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
    let mut cpus = Vec::new();
    for range in list.trim().split(',') {
        match range.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (first.parse().ok()?, last.parse::<usize>().ok()?);
                cpus.extend(first..=last);
            }
            None => cpus.push(range.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// The summed times of `cpus` in `/proc/stat`. A `cpuN` line reads: user, nice, system,
/// idle, iowait, irq, softirq, steal (and guest times, already counted in user). Idle
/// and iowait are time the core could have worked.
fn cpu_times(stat: &str, cpus: &[usize]) -> Option<Times> {
    let mut sum = Times {
        working: 0,
        total: 0,
    };
    let mut found = 0;
    for line in stat.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(cpu) = fields.next().and_then(|name| name.strip_prefix("cpu")) else {
            continue;
        };
        if !cpu.parse().is_ok_and(|n: usize| cpus.contains(&n)) {
            continue;
        }
        let ticks: Vec<u64> = fields.take(8).map_while(|t| t.parse().ok()).collect();
        if ticks.len() < 5 {
            return None;
        }
        let total: u64 = ticks.iter().sum();
        sum.total += total;
        sum.working += total - ticks[3] - ticks[4];
        found += 1;
    }
    (found > 0).then_some(sum)
}

fn saturated(before: Times, after: Times, were: bool) -> bool {
    let total = after.total.saturating_sub(before.total);
    let working = after.working.saturating_sub(before.working);
    let threshold = if were { NO_LONGER_SATURATED } else { SATURATED };
    total > 0 && working as f64 >= threshold * total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowed_cores_are_read_from_the_process_status() {
        let status =
            "Name:\ttessera\nCpus_allowed:\t10f\nCpus_allowed_list:\t0-3,8\nMems_allowed:\t1\n";
        assert_eq!(allowed_cpus(status), Some(vec![0, 1, 2, 3, 8]));
        assert_eq!(allowed_cpus("Cpus_allowed_list:\t2\n"), Some(vec![2]));
        assert_eq!(allowed_cpus("Cpus_allowed_list:\tx-2\n"), None);
        assert_eq!(allowed_cpus("Name:\ttessera\n"), None);
    }

    #[test]
    fn only_the_allowed_cores_count_and_idle_and_iowait_are_spare() {
        let stat = "cpu  30 0 10 150 10 0 0 0 0 0\n\
                    cpu0 20 0 5 70 5 0 0 0 0 0\n\
                    cpu1 10 0 5 80 5 0 0 0 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(
            cpu_times(stat, &[0]),
            Some(Times {
                working: 25,
                total: 100
            })
        );
        assert_eq!(
            cpu_times(stat, &[0, 1]),
            Some(Times {
                working: 40,
                total: 200
            })
        );
        assert_eq!(cpu_times(stat, &[5]), None);
    }

    #[test]
    fn cores_are_saturated_from_nine_tenths_of_their_time_at_work_until_below_three_quarters() {
        let at = |working, total| Times { working, total };
        assert!(saturated(at(100, 200), at(195, 300), false));
        assert!(saturated(at(100, 200), at(190, 300), false));
        assert!(!saturated(at(100, 200), at(189, 300), false));
        assert!(saturated(at(100, 200), at(175, 300), true));
        assert!(!saturated(at(100, 200), at(174, 300), true));
        assert!(
            !saturated(at(100, 200), at(100, 200), true),
            "no time passed"
        );
    }

    #[test]
    fn a_sample_is_kept_until_it_is_old_enough() {
        let start = Instant::now();
        let mut load = CpuLoad::new(start);
        assert!(!load.saturated(start), "one reading is no rate yet");
        load.saturated = true;
        assert!(
            load.saturated(start + SAMPLE_EVERY / 2),
            "not read again yet"
        );
        // Read again: on Linux the test machine's own cores, which the test does not
        // saturate over an instant; elsewhere there is nothing to read.
        let _ = load.saturated(start + SAMPLE_EVERY);
        assert_eq!(load.next_sample, start + SAMPLE_EVERY * 2);
    }
}
