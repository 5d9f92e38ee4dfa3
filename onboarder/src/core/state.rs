//! The lifecycle states of a device on the server, and which moves between them are legal
//! (DESIGN 4).
//!
//! ```text
//! expected --voucher accepted--> onboarding --enrollment confirmed--> active
//!     ^                              |                                  |
//!     +--- operator resets ----------+          decommissioning <-------+
//!                                                     |
//!                                               decommissioned
//! every state but the decommissioned ones --> quarantined, decommissioned-unattested
//! ```

use serde::{Deserialize, Serialize};

/// Where a device is in its life, as the server sees it.
#[non_exhaustive]
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceState {
    /// A voucher or allow-list entry was imported; the device has not shown up yet.
    Expected,
    /// The device accepted its voucher (it said so, or sent a CSR) and is enrolling; its IDevID
    /// key is pinned from now on.
    Onboarding,
    /// The device holds a confirmed LDevID.
    Active,
    /// Stopped by a failed check or an operator: refused everywhere.
    Quarantined,
    /// Ordered to wipe itself; waiting for its attestation.
    Decommissioning,
    /// Wiped, attestation verified, every credential revoked. This owner never takes it back.
    Decommissioned,
    /// Credentials revoked without the device's word (it never answered). Never mistaken for
    /// an attested decommissioning.
    DecommissionedUnattested,
}

impl std::fmt::Display for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceState::Expected => "expected",
            DeviceState::Onboarding => "onboarding",
            DeviceState::Active => "active",
            DeviceState::Quarantined => "quarantined",
            DeviceState::Decommissioning => "decommissioning",
            DeviceState::Decommissioned => "decommissioned",
            DeviceState::DecommissionedUnattested => "decommissioned-unattested",
        })
    }
}

impl DeviceState {
    /// Every state, in lifecycle order (for lists people choose from).
    pub const ALL: [DeviceState; 7] = [
        DeviceState::Expected,
        DeviceState::Onboarding,
        DeviceState::Active,
        DeviceState::Quarantined,
        DeviceState::Decommissioning,
        DeviceState::Decommissioned,
        DeviceState::DecommissionedUnattested,
    ];

    /// Whether the state machine allows `self -> to`.
    pub fn allows(self, to: DeviceState) -> bool {
        use DeviceState::*;
        matches!(
            (self, to),
            (Expected, Onboarding)
                | (Onboarding, Expected)
                | (Onboarding, Active)
                | (Active, Decommissioning)
                | (Decommissioning, Decommissioned)
                | (
                    Expected | Onboarding | Active | Decommissioning,
                    Quarantined
                )
                | (
                    Expected | Onboarding | Active | Decommissioning | Quarantined,
                    DecommissionedUnattested
                )
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceState::*;

    #[test]
    fn only_legal_transitions_are_allowed() {
        let all = [
            Expected,
            Onboarding,
            Active,
            Quarantined,
            Decommissioning,
            Decommissioned,
            DecommissionedUnattested,
        ];
        let legal = [
            (Expected, Onboarding),
            (Onboarding, Expected),
            (Onboarding, Active),
            (Active, Decommissioning),
            (Decommissioning, Decommissioned),
            (Expected, Quarantined),
            (Onboarding, Quarantined),
            (Active, Quarantined),
            (Decommissioning, Quarantined),
            (Expected, DecommissionedUnattested),
            (Onboarding, DecommissionedUnattested),
            (Active, DecommissionedUnattested),
            (Decommissioning, DecommissionedUnattested),
            (Quarantined, DecommissionedUnattested),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    from.allows(to),
                    legal.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }
}
