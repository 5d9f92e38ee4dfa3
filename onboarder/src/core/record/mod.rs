//! Everything the server knows about one device, stored as one value so that every change to a
//! device is one atomic write; and the sub-records it holds.
//!
//! A transition is only made through [`DeviceRecord::transition`], which refuses illegal ones
//! (see [`super::state`]).

mod cert;
mod decommission;
mod firmware_job;
mod rotation;
mod security;

pub use cert::{CertStatus, IssuedCert};
pub use decommission::{DataExport, Decommission};
pub use firmware_job::{FirmwareJob, JobState, MAX_JOB_TRANSITIONS};
pub use rotation::{Rotation, RotationState};
pub use security::SecurityTally;

use serde::{Deserialize, Serialize};

use super::error::LifecycleError;
use super::identity::DeviceId;
use super::state::DeviceState;
use protocol::message::NetworkProfile;

/// Everything the server knows about one device. Stored as one value, so that every change to
/// a device is one atomic write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device: its maker and serial.
    pub id: DeviceId,
    /// Lifecycle state.
    pub state: DeviceState,
    /// Bumped by the store on every write; a write names the version it read (optimistic
    /// concurrency), so two concurrent decisions about one device cannot both land.
    pub version: u64,
    /// When the record was created.
    pub created_at: u64,
    /// When it last changed.
    pub updated_at: u64,
    /// The imported voucher (COSE_Sign1).
    #[serde(default, with = "serde_bytes")]
    pub voucher: Option<Vec<u8>>,
    /// The voucher's expiry.
    #[serde(default)]
    pub voucher_expires_on: Option<u64>,
    /// Raw public key of the IDevID that accepted the voucher; a different IDevID with the
    /// same maker and serial (a clone) is refused from then on. Nothing is pinned before the
    /// device has shown that it accepted the voucher.
    #[serde(default, with = "serde_bytes")]
    pub idevid_key: Option<Vec<u8>>,
    /// Every certificate issued to the device, oldest first.
    #[serde(default)]
    pub certificates: Vec<IssuedCert>,
    /// Network credentials, once issued.
    #[serde(default)]
    pub network: Option<NetworkProfile>,
    /// Agent version from the last session.
    #[serde(default)]
    pub agent_version: Option<String>,
    /// Firmware version from the last session.
    #[serde(default)]
    pub firmware_version: Option<String>,
    /// Why the device is quarantined, if it is.
    #[serde(default)]
    pub quarantine_reason: Option<String>,
    /// The last rotation ordered by an operator.
    #[serde(default)]
    pub rotation: Option<Rotation>,
    /// The MUD URL (RFC 8520) of the IDevID pinned at onboarding: what the operator's network
    /// policy maps to a VLAN or filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mud_url: Option<String>,
    /// Device class (model) the device reports.
    #[serde(default)]
    pub class_id: Option<String>,
    /// Hardware facts the device last reported.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub hardware: std::collections::BTreeMap<String, String>,
    /// Sequence number of the firmware the device reports it runs.
    #[serde(default)]
    pub firmware_sequence: u64,
    /// The last firmware update offered to the device.
    #[serde(default)]
    pub firmware_job: Option<FirmwareJob>,
    /// The decommissioning order and its evidence.
    #[serde(default)]
    pub decommission: Option<Decommission>,
    /// The digest ([`protocol::message::anchors_digest`]) of the owner roots the device last
    /// said it trusts: in its hello, or by accepting a `TrustAnchors` command.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub anchors: Option<Vec<u8>>,
    /// Operator tags (inventory: what queries and campaigns select on).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub tags: std::collections::BTreeSet<String>,
    /// Operator attributes (name, value).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The end of support (of its class) the device confirmed it recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub support_notice: Option<u64>,
    /// What the server knows of the security events the device forwarded.
    #[serde(default, skip_serializing_if = "crate::core::record::is_default")]
    pub security: SecurityTally,
}

/// Whether `value` is its type's default (so it is left out of the stored record).
pub(crate) fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl DeviceRecord {
    /// A new record for an expected device with its voucher.
    pub fn expected(id: DeviceId, voucher: Vec<u8>, expires_on: Option<u64>, now: u64) -> Self {
        DeviceRecord {
            id,
            state: DeviceState::Expected,
            version: 0,
            created_at: now,
            updated_at: now,
            voucher: Some(voucher),
            voucher_expires_on: expires_on,
            idevid_key: None,
            certificates: Vec::new(),
            network: None,
            agent_version: None,
            firmware_version: None,
            quarantine_reason: None,
            rotation: None,
            mud_url: None,
            class_id: None,
            hardware: Default::default(),
            firmware_sequence: 0,
            firmware_job: None,
            decommission: None,
            anchors: None,
            tags: Default::default(),
            attributes: Default::default(),
            support_notice: None,
            security: Default::default(),
        }
    }

    /// Refuses `action` unless the device is in one of the `allowed` states.
    pub fn require_state(
        &self,
        allowed: &[DeviceState],
        action: &'static str,
    ) -> Result<(), LifecycleError> {
        if allowed.contains(&self.state) {
            return Ok(());
        }
        Err(self.wrong_state(action))
    }

    /// Moves to `to`, refusing a transition the state machine does not allow.
    pub fn transition(
        &mut self,
        to: DeviceState,
        action: &'static str,
        now: u64,
    ) -> Result<(), LifecycleError> {
        if !self.state.allows(to) {
            return Err(self.wrong_state(action));
        }
        self.state = to;
        self.updated_at = now;
        Ok(())
    }

    /// The refusal of `action` in the current state. A device this owner decommissioned hears
    /// what its owner must do instead.
    pub fn wrong_state(&self, action: &'static str) -> LifecycleError {
        match self.state {
            DeviceState::Decommissioned | DeviceState::DecommissionedUnattested => {
                LifecycleError::Decommissioned(self.id.clone())
            }
            state => LifecycleError::WrongState {
                device: self.id.clone(),
                state,
                action,
            },
        }
    }

    /// The certificate with serial `cert_serial`, if it was issued to this device.
    pub fn certificate(&self, cert_serial: &str) -> Option<&IssuedCert> {
        self.certificates.iter().find(|c| c.serial == cert_serial)
    }

    /// The certificate issued but not yet confirmed, if any.
    pub fn pending_certificate(&self) -> Option<&IssuedCert> {
        self.certificates
            .iter()
            .rev()
            .find(|c| c.status == CertStatus::Issued)
    }

    /// The device's current credentials (issued or active).
    pub fn live_certificates(&self) -> impl Iterator<Item = &IssuedCert> {
        self.certificates.iter().filter(|c| c.is_live())
    }

    /// The active certificate, if any.
    pub fn active_certificate(&self) -> Option<&IssuedCert> {
        self.certificates
            .iter()
            .rev()
            .find(|c| c.status == CertStatus::Active)
    }
}

impl DeviceRecord {
    /// Makes certificate `serial` the active one: the active certificate it replaces becomes
    /// superseded, and a pending rotation that it answers is done. Returns audit details of
    /// what changed.
    pub fn activate(
        &mut self,
        serial: &str,
        now: u64,
    ) -> Result<Vec<(String, String)>, LifecycleError> {
        let mut changes = Vec::new();
        if self.state == DeviceState::Onboarding {
            self.transition(DeviceState::Active, "confirming an enrollment", now)?;
        }
        let mut issued_at = 0;
        for cert in &mut self.certificates {
            if cert.serial == serial {
                cert.status = CertStatus::Active;
                issued_at = cert.issued_at;
            } else if cert.status == CertStatus::Active {
                cert.status = CertStatus::Superseded { at: now };
                changes.push((
                    "certificate-superseded".to_string(),
                    format!("{} replaced by {serial}", cert.serial),
                ));
            }
        }
        if let Some(rotation) = &mut self.rotation
            && rotation.state == RotationState::Pending
            && issued_at >= rotation.requested_at
        {
            rotation.state = RotationState::Done { at: now };
            changes.push(("rotated".to_string(), format!("now on {serial}")));
        }
        self.updated_at = now;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceState::*;

    #[test]
    fn an_illegal_transition_changes_nothing() {
        let id = DeviceId::new(super::super::identity::MakerId::of_spki(b"k"), "SN-1").unwrap();
        let mut r = DeviceRecord::expected(id, vec![1], Some(10), 1);
        let before = r.clone();
        assert!(matches!(
            r.transition(Active, "confirm enrollment", 2),
            Err(LifecycleError::WrongState { .. })
        ));
        assert_eq!(r, before);
    }
}
