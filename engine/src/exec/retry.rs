//! The one backoff recipe flow retries with: node attempts, Hub uploads, text APIs.

use std::time::Duration;

/// A node attempt's retry delay: 0.5 s, 1 s, 2 s, … capped at 60 s, with jitter.
pub(super) fn backoff(attempt: u32) -> Duration {
    backoff_delay(Duration::from_millis(500), attempt, Duration::from_secs(60))
}

/// Exponential backoff with jitter, the one recipe flow retries with (node attempts, Hub
/// uploads, text APIs): `base`, 2·`base`, 4·`base`, … for attempt 1, 2, 3, …, capped at `cap`,
/// each multiplied by a random factor in [0.5, 1.5) so that retrying clients spread out.
pub fn backoff_delay(base: Duration, attempt: u32, cap: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(20) as i32;
    let delay = (base.as_secs_f64() * 2f64.powi(doublings)).min(cap.as_secs_f64());
    Duration::from_secs_f64(delay * (0.5 + fastrand::f64()))
}
