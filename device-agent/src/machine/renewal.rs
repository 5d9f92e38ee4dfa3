//! When to renew, and what a renewal must look like before it is stored.

use certs::CertInfo;
use protocol::keys::PublicKey;
use protocol::message::Enrollment;

use crate::error::AgentError;

/// When to renew a certificate received at `now` and valid until `not_after`: at two thirds
/// of its remaining life, moved by `jitter` (in [-1, 1)) times a sixth of it, so a fleet
/// enrolled together renews spread between one half and five sixths of the lifetime.
pub fn renew_at(now: u64, not_after: u64, jitter: f64) -> u64 {
    let life = not_after.saturating_sub(now) as f64;
    let offset = life * 2.0 / 3.0 + jitter.clamp(-1.0, 1.0) * life / 6.0;
    now + offset.max(0.0) as u64
}

/// How late a renewal may be before it counts as woken by a clock jump (or a device back from
/// a long sleep) rather than by its own timer.
pub const LATE: u64 = 60;
/// The most a renewal woken late is spread over.
pub const SPREAD: u64 = 3600;

/// Extra seconds to wait before a renewal that fell due at `due` and is noticed at `now`. On
/// time: none. Late (a clock set forward, say by NTP on a whole fleet at once): a random part
/// (`jitter` in [0, 1)) of an hour, or of a quarter of the certificate's remaining life if
/// that is shorter, so the fleet does not renew in one storm and no certificate runs out.
pub fn spread_after(now: u64, due: u64, not_after: u64, jitter: f64) -> u64 {
    if now.saturating_sub(due) <= LATE {
        return 0;
    }
    let spread = SPREAD.min(not_after.saturating_sub(now) / 4);
    (spread as f64 * jitter.clamp(0.0, 1.0)) as u64
}

/// Checks a renewed LDevID: same device, the new key, and a chain to one of the owner roots
/// the device trusts (the issuing CA may have rolled over, and the root with it).
pub fn check_renewal(
    enrollment: &Enrollment,
    serial: &str,
    key: &PublicKey,
    anchors: &[Vec<u8>],
    now: u64,
) -> Result<CertInfo, AgentError> {
    super::onboarding::check_enrollment(enrollment, serial, key, anchors, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_between_half_and_five_sixths_of_the_life() {
        assert_eq!(renew_at(1000, 1600, 0.0), 1400);
        assert_eq!(renew_at(1000, 1600, -1.0), 1300);
        assert_eq!(renew_at(1000, 1600, 1.0), 1500);
        assert_eq!(renew_at(1000, 900, 0.0), 1000, "expired: renew now");
    }

    #[test]
    fn a_renewal_woken_by_a_clock_jump_is_spread_and_never_past_expiry() {
        let day = 86_400;
        // On its own timer: at once.
        assert_eq!(spread_after(1000, 1000, 10 * day, 0.9), 0);
        assert_eq!(spread_after(1000 + LATE, 1000, 10 * day, 0.9), 0);
        // A jump of a week: spread over the hour, by the device's own jitter.
        let now = 1000 + 7 * day;
        let waits: Vec<u64> = [0.0, 0.25, 0.5, 0.99]
            .iter()
            .map(|j| spread_after(now, 1000, now + 30 * day, *j))
            .collect();
        assert_eq!(waits, [0, 900, 1800, 3564]);
        // Close to expiry: within a quarter of what is left.
        assert!(spread_after(now, 1000, now + 400, 0.99) <= 100);
        // Expired already: at once.
        assert_eq!(spread_after(now, 1000, now - 5, 0.99), 0);
    }
}
