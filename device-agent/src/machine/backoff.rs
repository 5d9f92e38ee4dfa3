//! How long the agent waits before trying again: exponential with jitter after connection
//! trouble, back to the shortest delay once a session worked, at least [`Backoff::busy`] after
//! the server turned the connection away for load, and a long wait after the server refused
//! the device's credential (trying sooner changes nothing until an operator acts).
//!
//! Why a floor for a busy server: when a whole fleet loses its sessions at once (a restart, a
//! stall), every device comes back within the first delay. The server completes what it can
//! and turns the rest away before any handshake (QUIC's CONNECTION_REFUSED, which carries no
//! delay of its own); were those to retry after a second or two, the refused would keep the
//! server busy refusing. Spread over `busy` (with the jitter, 0.5 to 1.5 times it) and doubling
//! for those turned away again, the attempts fall toward the rate the server completes.

use std::time::Duration;

/// Retry delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay after connection trouble.
    pub max: Duration,
    /// Shortest delay after the server turned the connection away because it is at capacity.
    pub busy: Duration,
    /// Delay after the server refused the device's credential.
    pub refused: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            busy: Duration::from_secs(30),
            refused: Duration::from_secs(3600),
        }
    }
}

/// How an attempt of the run loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A session was open and closed (normally, or it failed after working).
    HadSession {
        /// Whether it ended with an error.
        failed: bool,
    },
    /// It failed before any session: connection trouble, or a refusal.
    Failed {
        /// Whether the failure needs someone to act (a refused credential).
        permanent: bool,
    },
    /// The server turned the connection away because it is at capacity.
    Busy,
}

/// How long to wait after an attempt that ended as `attempt`, when the wait after the
/// previous failure was `previous` (`None` if the previous attempt did not fail, or failed
/// after a working session).
pub fn wait(previous: Option<Duration>, attempt: Attempt, backoff: &Backoff) -> Option<Duration> {
    match attempt {
        Attempt::HadSession { failed: false } => None,
        Attempt::HadSession { failed: true } => Some(backoff.initial),
        Attempt::Failed { permanent: true } => Some(backoff.refused),
        Attempt::Failed { permanent: false } => Some(next(previous, backoff)),
        Attempt::Busy => Some(next(previous, backoff).max(backoff.busy)),
    }
}

/// The exponential step after `previous`.
fn next(previous: Option<Duration>, backoff: &Backoff) -> Duration {
    match previous {
        Some(p) => (p * 2).clamp(backoff.initial, backoff.max),
        None => backoff.initial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_reset_after_a_session_and_stay_long_after_a_refusal() {
        let b = Backoff::default();
        let secs = |s| Some(Duration::from_secs(s));
        let transient = Attempt::Failed { permanent: false };
        let mut d = wait(None, transient, &b);
        assert_eq!(d, secs(1));
        d = wait(d, transient, &b);
        assert_eq!(d, secs(2));
        d = wait(d, transient, &b);
        assert_eq!(d, secs(4));
        // A session that worked, even one that then failed, starts over.
        d = wait(d, Attempt::HadSession { failed: true }, &b);
        assert_eq!(d, secs(1));
        d = wait(d, transient, &b);
        assert_eq!(d, secs(2));
        assert_eq!(wait(d, Attempt::HadSession { failed: false }, &b), None);
        for _ in 0..20 {
            d = wait(d, transient, &b);
        }
        assert_eq!(d, Some(b.max));
        let refused = Attempt::Failed { permanent: true };
        assert_eq!(wait(d, refused, &b), Some(b.refused));
        assert_eq!(wait(Some(b.refused), refused, &b), Some(b.refused));
    }

    #[test]
    fn a_busy_server_is_given_at_least_the_busy_delay_and_the_doubling_goes_on_from_there() {
        let b = Backoff::default();
        let busy = Attempt::Busy;
        // The first refusal for load waits `busy`, not `initial`.
        let mut d = wait(None, busy, &b);
        assert_eq!(d, Some(b.busy));
        // Connection trouble after it keeps doubling from there, up to the cap.
        d = wait(d, Attempt::Failed { permanent: false }, &b);
        assert_eq!(d, Some(b.max));
        assert_eq!(wait(d, busy, &b), Some(b.max));
        // A session that worked starts over.
        d = wait(d, Attempt::HadSession { failed: true }, &b);
        assert_eq!(d, Some(b.initial));
        assert_eq!(wait(d, busy, &b), Some(b.busy));
    }
}
