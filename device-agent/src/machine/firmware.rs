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
