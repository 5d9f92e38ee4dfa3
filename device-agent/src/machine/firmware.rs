//! The device's checks of a firmware manifest, before anything is downloaded.

use certs::identity::Product;
use protocol::manifest::{Manifest, ManifestError, ManifestExpectation};

use super::AgentState;

/// Verifies a signed manifest against the device's product (the manufacturer's firmware key,
/// vendor and class) and its anti-rollback counter.
pub fn accept_manifest(
    signed: &[u8],
    product: &Product,
    state: &AgentState,
    now: u64,
) -> Result<Manifest, ManifestError> {
    let manifest = Manifest::open(signed, &product.firmware_key)?;
    manifest.check(
        &ManifestExpectation {
            vendor_id: &product.vendor_id,
            class_id: &product.class_id,
            installed_sequence: state.firmware_sequence,
        },
        now,
    )?;
    Ok(manifest)
}

/// What to do with an offered update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdatePlan {
    /// It is what runs already (a report was lost): say it is healthy.
    AlreadyRunning {
        /// SHA-256 of the image.
        digest: Vec<u8>,
        /// Its size.
        size: u64,
    },
    /// Refuse it, and report why when its digest could be read.
    Refuse {
        /// SHA-256 of the image, if the manifest could be read.
        digest: Option<Vec<u8>>,
        /// Why.
        reason: ManifestError,
    },
    /// Download, verify and install it.
    Install(Manifest),
}

/// Decides on an offered update (SUIT order: the manifest is checked before any download).
pub fn plan(signed: &[u8], product: &Product, state: &AgentState, now: u64) -> UpdatePlan {
    let hint = Manifest::parse_unverified(signed).ok();
    if let Some(m) = &hint
        && state.firmware_digest.as_ref() == Some(&m.digest)
    {
        return UpdatePlan::AlreadyRunning {
            digest: m.digest.clone(),
            size: m.size,
        };
    }
    match accept_manifest(signed, product, state, now) {
        Ok(manifest) => UpdatePlan::Install(manifest),
        Err(reason) => UpdatePlan::Refuse {
            digest: hint.map(|m| m.digest),
            reason,
        },
    }
}

/// Where a download resumes: after what is staged, unless more than the image is staged (then
/// from the start, discarding it).
pub fn resume_at(staged: u64, size: u64) -> (u64, bool) {
    if staged > size {
        (0, true)
    } else {
        (staged, false)
    }
}

/// Bytes to ask for at `offset` of an image of `size`, at most `chunk`: always at least one,
/// so that an image with bytes appended past its announced end is caught.
pub fn want(offset: u64, size: u64, chunk: u32) -> u32 {
    size.saturating_sub(offset).clamp(1, u64::from(chunk)) as u32
}

/// The state while `manifest`'s image boots on trial (a crash now rolls back to what ran).
pub fn on_trial(state: &AgentState, manifest: &Manifest) -> AgentState {
    let mut next = state.clone();
    next.trial = Some(super::Trial {
        digest: manifest.digest.clone(),
        previous_version: state.firmware_version.clone(),
    });
    next.firmware_version = manifest.version.clone();
    next
}

/// The state once the image on trial proved healthy: committed, its sequence the new floor.
pub fn committed(state: &AgentState, manifest: &Manifest) -> AgentState {
    let mut next = state.clone();
    next.firmware_sequence = manifest.sequence;
    next.firmware_digest = Some(manifest.digest.clone());
    next.trial = None;
    next
}

/// The state once the image on trial failed its health check: back on the previous image,
/// with the report to deliver.
pub fn rolled_back(state: &AgentState, manifest: &Manifest, reason: String) -> AgentState {
    let mut next = state.clone();
    if let Some(trial) = next.trial.take() {
        next.firmware_version = trial.previous_version;
    }
    next.pending_report = Some(protocol::message::FirmwareReport::rolled_back(
        &manifest.digest,
        reason,
        manifest.size,
    ));
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_resume_and_always_ask_past_the_end() {
        assert_eq!(resume_at(100, 1000), (100, false));
        assert_eq!(resume_at(2000, 1000), (0, true));
        assert_eq!(want(0, 1000, 256), 256);
        assert_eq!(want(900, 1000, 256), 100);
        assert_eq!(want(1000, 1000, 256), 1, "one byte past the end");
    }

    #[test]
    fn garbage_is_refused_before_any_download() {
        let product = certs::identity::Product {
            vendor_id: "v".into(),
            class_id: "c".into(),
            firmware_key: protocol::keys::PublicKey::ed25519(&[3; 32]).unwrap(),
        };
        let plan = plan(b"junk", &product, &AgentState::factory("1"), 0);
        assert!(matches!(plan, UpdatePlan::Refuse { digest: None, .. }));
    }
}
