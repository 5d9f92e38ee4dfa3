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

/// Checks a renewed LDevID: same device, the new key, and a chain to one of the owner's
/// anchors (the CA may have rolled over, the root has not).
pub fn check_renewal(
    enrollment: &Enrollment,
    serial: &str,
    key: &PublicKey,
    anchors: &[Vec<u8>],
    now: u64,
) -> Result<CertInfo, AgentError> {
    let mut last = None;
    for anchor in anchors {
        match super::onboarding::check_enrollment(enrollment, serial, key, anchor, now) {
            Ok(info) => return Ok(info),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| AgentError::BadEnrollment("no owner anchor".into())))
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
}
