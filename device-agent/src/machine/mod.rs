//! The agent's decisions, with no I/O: what it stores, which checks a voucher, a registrar and
//! an enrollment must pass, how commands are answered, and what comes next at each step of
//! onboarding ([`onboarding::remaining`]), a session ([`session`]), a renewal ([`renewal`]),
//! an update ([`firmware::plan`] and the trial's states), a decommissioning
//! ([`decommission`]), after a crash ([`recovery`]) and after a failure ([`backoff`]). The
//! driver feeds these functions what it read from the network and the platform, and carries
//! out what they return.

pub mod anchors;
pub mod backoff;
pub mod commands;
pub mod decommission;
pub mod firmware;
pub mod onboarding;
pub mod recovery;
pub mod renewal;
pub mod security;
pub mod session;

use protocol::message::{DeviceConfig, NetworkProfile};
use serde::{Deserialize, Serialize};

/// Where the device is in its life, as the device sees it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Factory state: only the IDevID.
    Factory,
    /// LDevID and credentials stored; `confirmed` once the server welcomed a hello on it (the
    /// use that confirms the enrollment on the server).
    Enrolled {
        /// Whether the server has confirmed the enrollment.
        confirmed: bool,
    },
}

/// Everything the agent persists (atomically, as one value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// Lifecycle phase.
    pub phase: Phase,
    /// The owner's CA certificate pinned by the voucher (DER).
    #[serde(default, with = "serde_bytes")]
    pub owner_ca: Option<Vec<u8>>,
    /// The owner roots the owner gave since (an owner-root rollover, [`anchors`]): when there
    /// are any, they are what the device trusts, in place of `owner_ca`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_roots: Vec<serde_bytes::ByteBuf>,
    /// The LDevID certificate (DER).
    #[serde(default, with = "serde_bytes")]
    pub ldevid: Option<Vec<u8>>,
    /// CA certificates above the LDevID, issuing CA first (DER).
    #[serde(default)]
    pub chain: Vec<serde_bytes::ByteBuf>,
    /// Network credentials.
    #[serde(default)]
    pub network: Option<NetworkProfile>,
    /// Operational settings.
    #[serde(default)]
    pub config: Option<DeviceConfig>,
    /// Version string of the running firmware.
    pub firmware_version: String,
    /// Sequence number of the running firmware: the highest the device accepted (a new image
    /// must be above it).
    #[serde(default)]
    pub firmware_sequence: u64,
    /// A renewed LDevID stored but not yet confirmed by using it: the old one stays current
    /// until then (its key is the key store's pending key).
    #[serde(default)]
    pub renewal: Option<Renewal>,
    /// When to renew the current LDevID (seconds since the epoch).
    #[serde(default)]
    pub renew_at: Option<u64>,
    /// SHA-256 of the running firmware image (none for the factory image).
    #[serde(default, with = "serde_bytes")]
    pub firmware_digest: Option<Vec<u8>>,
    /// A firmware image booted on trial and not yet committed: after a crash, the agent rolls
    /// back to what this records.
    #[serde(default)]
    pub trial: Option<Trial>,
    /// A firmware report not yet delivered (it is sent on the next session).
    #[serde(default)]
    pub pending_report: Option<protocol::message::FirmwareReport>,
    /// A signed wipe attestation not yet acknowledged by the server: the device has wiped
    /// itself and keeps only what it needs to deliver this.
    #[serde(default, with = "serde_bytes")]
    pub pending_attestation: Option<Vec<u8>>,
    /// The time at the last enrollment, which the device's certificates were checked at: after
    /// a restart, a clock that reads earlier (no battery-backed clock, or one reset) is moved
    /// up to it, as the time the voucher gave is lost with the process.
    #[serde(default)]
    pub clock_floor: Option<u64>,
    /// When security updates for this device end, as its owner said (seconds since the
    /// epoch): what the device tells its user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub support_ends_on: Option<u64>,
    /// The number of the next security event (never reused).
    #[serde(default)]
    pub security_sequence: u64,
    /// Security events not yet acknowledged by the server, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_events: Vec<protocol::message::SecurityEvent>,
}

/// What ran before a trial boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// SHA-256 of the image on trial.
    #[serde(with = "serde_bytes")]
    pub digest: Vec<u8>,
    /// Version that ran before.
    pub previous_version: String,
}

/// A renewed certificate waiting to replace the current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    /// The new LDevID (DER).
    #[serde(with = "serde_bytes")]
    pub ldevid: Vec<u8>,
    /// Its CA chain, issuing CA first.
    pub chain: Vec<serde_bytes::ByteBuf>,
    /// The operational settings that came with it (the owner's policy at the re-key), taken
    /// when it is confirmed: a policy changed since onboarding reaches the device at its next
    /// re-key. None in states written before they were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<DeviceConfig>,
}

impl AgentState {
    /// The state of a device fresh from the factory.
    pub fn factory(firmware_version: &str) -> Self {
        AgentState {
            phase: Phase::Factory,
            owner_ca: None,
            owner_roots: Vec::new(),
            ldevid: None,
            chain: Vec::new(),
            network: None,
            config: None,
            firmware_version: firmware_version.to_string(),
            firmware_sequence: 0,
            renewal: None,
            renew_at: None,
            firmware_digest: None,
            trial: None,
            pending_report: None,
            pending_attestation: None,
            clock_floor: None,
            support_ends_on: None,
            security_sequence: 0,
            security_events: Vec::new(),
        }
    }

    /// The owner roots the device trusts (DER): those the owner gave last, or else the one
    /// its voucher pinned.
    pub fn roots(&self) -> Vec<Vec<u8>> {
        if self.owner_roots.is_empty() {
            self.owner_ca.iter().cloned().collect()
        } else {
            self.owner_roots.iter().map(|r| r.to_vec()).collect()
        }
    }

    /// Whether the device holds an LDevID.
    pub fn is_enrolled(&self) -> bool {
        matches!(self.phase, Phase::Enrolled { .. })
    }
}
