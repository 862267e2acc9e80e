//! Per-workload connection limits (`[agent] max_connections_per_workload`): one workload
//! opening connections in a loop must not take every slot of `max_connections` and starve
//! the others. An audited connection holds a [`WorkloadSlot`] for its whole life; over the
//! limit, new connections of that workload are refused (and journaled) while other
//! workloads still connect.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// How often a workload that keeps being refused is logged at warn level.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Open audited connections per workload name.
#[derive(Debug, Default)]
pub struct WorkloadLimits {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    open: HashMap<String, usize>,
    /// Per workload: when a refusal was last logged at warn level, and refusals since.
    refusals: HashMap<String, (Instant, u64)>,
}

/// What a refusal should log, decided under the lock so that concurrent refusals of one
/// workload produce one warning per [`LOG_EVERY`].
#[derive(Debug, PartialEq, Eq)]
pub enum RefusalLog {
    /// Log at warn level; `since_last` refusals were only logged at debug level before.
    Warn { since_last: u64 },
    /// Already warned recently: debug level.
    Quiet,
}

/// A connection counted against its workload; released on drop, even if the connection
/// task panics.
#[derive(Debug)]
pub struct WorkloadSlot {
    limits: Arc<WorkloadLimits>,
    workload: String,
}

impl WorkloadLimits {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single insert/increment/decrement: a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for `workload` if it has fewer than `limit` connections open;
    /// otherwise returns how many it has open.
    pub fn try_acquire(
        self: &Arc<Self>,
        workload: &str,
        limit: usize,
    ) -> Result<WorkloadSlot, usize> {
        let mut st = self.lock();
        let open = st.open.entry(workload.to_owned()).or_insert(0);
        if *open >= limit {
            return Err(*open);
        }
        *open += 1;
        Ok(WorkloadSlot {
            limits: Arc::clone(self),
            workload: workload.to_owned(),
        })
    }

    /// Notes a refusal of `workload` and says how loudly to log it.
    pub fn note_refusal(&self, workload: &str, now: Instant) -> RefusalLog {
        let mut st = self.lock();
        match st.refusals.get_mut(workload) {
            Some((last, quiet)) if now.duration_since(*last) < LOG_EVERY => {
                *quiet += 1;
                RefusalLog::Quiet
            }
            Some((last, quiet)) => {
                let since_last = std::mem::take(quiet);
                *last = now;
                RefusalLog::Warn { since_last }
            }
            None => {
                st.refusals.insert(workload.to_owned(), (now, 0));
                RefusalLog::Warn { since_last: 0 }
            }
        }
    }

    /// Connections `workload` has open now.
    pub fn open(&self, workload: &str) -> usize {
        self.lock().open.get(workload).copied().unwrap_or(0)
    }
}

impl Drop for WorkloadSlot {
    fn drop(&mut self) {
        let mut st = self.limits.lock();
        if let Some(open) = st.open.get_mut(&self.workload) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                // Workloads come and go (one per container, per CI job): keep no entry
                // for those with nothing open.
                st.open.remove(&self.workload);
                st.refusals.remove(&self.workload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_at_its_limit_is_refused_while_others_are_not() {
        let limits = Arc::new(WorkloadLimits::default());
        let mut a: Vec<_> = (0..3)
            .map(|_| limits.try_acquire("loop", 3).expect("under the limit"))
            .collect();
        assert_eq!(limits.try_acquire("loop", 3).unwrap_err(), 3);
        let b = limits.try_acquire("other", 3).expect("another workload");
        a.pop();
        assert_eq!(limits.open("loop"), 2);
        let again = limits.try_acquire("loop", 3).expect("a slot was released");
        drop(again);
        drop(b);
        assert_eq!(limits.open("other"), 0);
        assert!(
            !limits.lock().open.contains_key("other"),
            "no empty entries kept"
        );
        drop(a);
        assert_eq!(limits.open("loop"), 0);
    }

    #[test]
    fn refusals_warn_once_per_interval_and_count_the_quiet_ones() {
        let limits = WorkloadLimits::default();
        let t0 = Instant::now();
        assert_eq!(
            limits.note_refusal("w", t0),
            RefusalLog::Warn { since_last: 0 }
        );
        assert_eq!(limits.note_refusal("w", t0), RefusalLog::Quiet);
        assert_eq!(
            limits.note_refusal("w", t0 + Duration::from_secs(1)),
            RefusalLog::Quiet
        );
        assert_eq!(
            limits.note_refusal("w", t0 + LOG_EVERY),
            RefusalLog::Warn { since_last: 2 }
        );
        assert_eq!(
            limits.note_refusal("x", t0),
            RefusalLog::Warn { since_last: 0 }
        );
    }
}
