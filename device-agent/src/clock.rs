//! Wall-clock time for the agent: the system's, corrected when a signed answer shows it wrong
//! (a nonced voucher's creation time, see [`Clock::set`]), or moved forward by hand (tests and
//! simulators live through a certificate's lifetime in moments this way). Everything that
//! reads the time goes through one [`Clock`]: the checks of vouchers and certificates, TLS's
//! own checks, renewal. A wait for a moment of wall-clock time ([`Clock::sleep_until`]) wakes
//! when the clock is moved, and re-reads the clock at least once a minute so a clock set late
//! (by NTP after boot) is noticed.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::UnixTime;
use tokio::sync::watch;

/// How long a wait for a wall-clock moment sleeps before it reads the clock again.
const RECHECK: u64 = 60;

/// The agent's clock; clones share it.
#[derive(Debug, Clone)]
pub struct Clock {
    /// Seconds added to the system's time (negative when it runs ahead); moving it wakes
    /// every waiter.
    ahead: Arc<watch::Sender<i64>>,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Clock {
        Clock {
            ahead: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Seconds since the Unix epoch.
    pub fn now(&self) -> u64 {
        certs::unix_now().saturating_add_signed(*self.ahead.borrow())
    }

    /// Moves this clock (and every clone of it) `secs` seconds forward.
    pub fn advance(&self, secs: u64) {
        let secs = i64::try_from(secs).unwrap_or(i64::MAX);
        self.ahead
            .send_modify(|ahead| *ahead = ahead.saturating_add(secs));
    }

    /// Sets this clock (and every clone) to read `at` now: the system's clock is wrong and a
    /// trustworthy source said what time it is.
    pub fn set(&self, at: u64) {
        let system = i64::try_from(certs::unix_now()).unwrap_or(i64::MAX);
        let at = i64::try_from(at).unwrap_or(i64::MAX);
        self.ahead.send_replace(at.saturating_sub(system));
    }

    /// Returns once the clock reads `at` or later.
    pub async fn sleep_until(&self, at: u64) {
        let mut moved = self.ahead.subscribe();
        loop {
            let now = self.now();
            if now >= at {
                return;
            }
            let nap = Duration::from_secs((at - now).min(RECHECK));
            tokio::select! {
                () = tokio::time::sleep(nap) => {}
                _ = moved.changed() => {}
            }
        }
    }
}

pub use certs::rfc3339;

/// TLS checks certificates against this clock too.
impl rustls::time_provider::TimeProvider for Clock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(Duration::from_secs(self.now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_when_the_clock_is_moved_past_it() {
        let clock = Clock::system();
        let at = clock.now() + 3_600;
        let waiting = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(at).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        clock.advance(3_600);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(clock.now() >= at);
        // Set back years, then forward again: the reading follows.
        let system = certs::unix_now();
        clock.set(system - 3 * 365 * 86_400);
        assert!(clock.now().abs_diff(system - 3 * 365 * 86_400) <= 1);
        clock.set(system + 10);
        assert!(clock.now().abs_diff(system + 10) <= 1);
    }
}
