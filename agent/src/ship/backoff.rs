//! Exponential backoff with jitter. Pure: the random part is passed in.
use std::time::Duration;

/// Doubling pauses from `initial` up to `max`, each drawn in `[base/2, base]`
/// ("equal jitter"): many agents that lost the same endpoint do not retry in step, and
/// no pause is shorter than half the schedule.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A schedule starting at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The next pause, given a random number.
    pub fn next_with(&mut self, random: u64) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        let base = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = base / 2;
        let spread = u64::try_from((base - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(if spread == 0 {
            0
        } else {
            random % (spread + 1)
        })
    }

    /// The next pause, with a random jitter from the OS.
    pub fn next_delay(&mut self) -> Duration {
        let mut bytes = [0u8; 8];
        // Jitter only spreads retries; a failure to read randomness just removes it.
        let _ = getrandom::fill(&mut bytes);
        self.next_with(u64::from_le_bytes(bytes))
    }

    /// Back to the first pause (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let lows: Vec<_> = (0..6).map(|_| b.next_with(0)).collect();
        assert_eq!(
            lows,
            [50, 100, 200, 400, 500, 500].map(Duration::from_millis)
        );
        b.reset();
        let highs: Vec<_> = (0..6).map(|_| b.next_with(u64::MAX - 1)).collect();
        for (low, high) in lows.iter().zip(&highs) {
            assert!(high >= low && *high <= *low * 2, "{low:?} {high:?}");
        }
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(5) && d <= Duration::from_millis(80),
                "{d:?}"
            );
        }
    }
}
