//! An operator's order to re-key a device, and how it went.

use serde::{Deserialize, Serialize};

/// An operator's order to re-key a device, and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// When it was ordered; a certificate issued at or after this time completes it.
    pub requested_at: u64,
    /// How far it got.
    pub state: RotationState,
}

/// Progress of a rotation.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RotationState {
    /// Waiting for the device.
    Pending,
    /// The device confirmed a certificate for a fresh key.
    Done {
        /// When.
        at: u64,
    },
    /// The device could not rotate.
    Failed {
        /// Why.
        reason: String,
    },
}
