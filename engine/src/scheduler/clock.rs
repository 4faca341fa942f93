//! Wall-clock time for the scheduler, injectable: [`SystemClock`] in `flow schedule`,
//! [`ManualClock`] in tests, which move time by hand (across a DST change, past a missed run).

use jiff::Timestamp;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::watch;

/// A future the clock hands out.
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where the scheduler gets the time and waits for it.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
    /// Resolves once [`Clock::now`] has reached `when` (at once when it has already).
    fn sleep_until(&self, when: Timestamp) -> Sleep<'_>;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// The longest single wait: the wall clock can jump (NTP, a suspended machine) while tokio's
/// timers follow the monotonic clock, so long waits are cut into steps that re-read the time.
const LONGEST_WAIT: Duration = Duration::from_secs(30);

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, when: Timestamp) -> Sleep<'_> {
        Box::pin(async move {
            loop {
                let left = when.duration_since(Timestamp::now());
                if left.is_zero() || left.is_negative() {
                    return;
                }
                let left = Duration::try_from(left).unwrap_or(LONGEST_WAIT);
                tokio::time::sleep(left.min(LONGEST_WAIT)).await;
            }
        })
    }
}

/// A clock that only moves when told to; sleepers wake when it passes their time.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<Timestamp>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock {
            now: watch::Sender::new(start),
        }
    }

    /// Moves the clock to `time` (never backwards) and wakes whoever waits for it.
    pub fn set(&self, time: Timestamp) {
        self.now.send_if_modified(|now| {
            let later = time > *now;
            if later {
                *now = time;
            }
            later
        });
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let now = *self.now.borrow();
        self.set(now + by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    fn sleep_until(&self, when: Timestamp) -> Sleep<'_> {
        let mut changes = self.now.subscribe();
        Box::pin(async move {
            while *changes.borrow_and_update() < when {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleepers_wake_when_the_clock_passes_their_time() {
        let clock = std::sync::Arc::new(ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap()));
        let when = clock.now() + Duration::from_secs(60);
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(when).await }
        });
        clock.advance(Duration::from_secs(30));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(30));
        sleeper.await.unwrap();
        assert_eq!(clock.now(), when);
    }
}
