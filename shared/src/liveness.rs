//! Liveness timing both ends agree on, and the reconnect backoff.
//!
//! QUIC keep-alives every 3 s and a 9 s idle timeout (three keep-alives
//! missed) mean a vanished peer is noticed within seconds, not after
//! quinn's default 30 s. Every keep-alive is a packet the commander must
//! decrypt and answer, per sentry: at 1 s, 25,000 idle sentries cost the
//! commander (measured in `docs/benchmarks.md`'s capacity rows) more than
//! their heartbeats did. A
//! restarted commander resets old connections at once (its stateless-reset
//! key is derived from its identity). A sentry also treats "no
//! acknowledgement within 3 heartbeat intervals" as a dead session.

use std::time::Duration;

pub const KEEP_ALIVE: Duration = Duration::from_secs(3);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(9);
/// The whole handshake (TLS, hello, challenge, welcome) must finish in this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat intervals without an acknowledgement before a session is dead.
pub const ACK_INTERVALS: u32 = 3;
/// Never declare a session dead sooner than this, whatever the interval.
pub const MIN_ACK_DEADLINE: Duration = Duration::from_secs(3);

/// The deadline for an acknowledgement at heartbeat `interval`.
pub fn ack_deadline(interval: Duration) -> Duration {
    (interval * ACK_INTERVALS).max(MIN_ACK_DEADLINE)
}

/// Jittered exponential backoff: the n-th wait is uniform in
/// `[base/2, base]` with `base = min(max, min · 2ⁿ)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next wait, given a uniform random number in `[0, 1)`.
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        let base = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let unit = unit.clamp(0.0, 1.0);
        base.mul_f64(0.5 + 0.5 * unit).max(self.min.min(base))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_stays_within_bounds() {
        let min = Duration::from_millis(500);
        let max = Duration::from_secs(5);
        let mut b = Backoff::new(min, max);
        let waits: Vec<_> = (0..10).map(|i| b.next_with(i as f64 / 10.0)).collect();
        for w in &waits {
            assert!(*w >= min && *w <= max, "{w:?}");
        }
        assert!(waits[9] >= Duration::from_millis(2500));
        b.reset();
        assert!(b.next_with(1.0) <= min);
    }

    #[test]
    fn ack_deadline_is_three_intervals_at_least_three_seconds() {
        assert_eq!(
            ack_deadline(Duration::from_secs(10)),
            Duration::from_secs(30)
        );
        assert_eq!(ack_deadline(Duration::from_millis(100)), MIN_ACK_DEADLINE);
    }
}
