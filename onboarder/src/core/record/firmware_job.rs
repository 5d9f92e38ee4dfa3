//! A firmware update offered to a device, and where it stands.

use serde::{Deserialize, Serialize};

use crate::core::release::Release;

/// Where an offered update stands for one device.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Offered, nothing heard yet.
    Offered,
    /// The device is fetching the image.
    Downloading,
    /// The device checked the image.
    Verified,
    /// Written to the inactive slot.
    Installed,
    /// Running and healthy: done.
    Healthy,
    /// Failed its health check; the previous image runs.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// Refused or failed before installing.
    Failed {
        /// Why.
        reason: String,
        /// The device's refusal code, when it refused the manifest or the image.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refusal: Option<protocol::manifest::FirmwareRefusal>,
    },
    /// Not offered: the device already runs this sequence number or a higher one.
    Skipped {
        /// Why.
        reason: String,
    },
    /// The campaign was aborted before the device started.
    Cancelled,
}

impl JobState {
    /// Whether nothing more will happen.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            JobState::Offered | JobState::Downloading | JobState::Verified | JobState::Installed
        )
    }

    /// Whether the update failed on the device.
    pub fn is_failure(&self) -> bool {
        matches!(self, JobState::RolledBack { .. } | JobState::Failed { .. })
    }
}

/// A firmware update offered to a device by a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareJob {
    /// The campaign.
    pub campaign: String,
    /// SHA-256 of the image.
    #[serde(with = "serde_bytes")]
    pub digest: Vec<u8>,
    /// The signed manifest, handed to the device.
    #[serde(with = "serde_bytes")]
    pub manifest: Vec<u8>,
    /// Where the device downloads the image over HTTPS, if the campaign said so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Release version.
    pub version: String,
    /// Release sequence number.
    pub sequence: u64,
    /// Progress.
    pub state: JobState,
    /// Bytes the device reported holding.
    pub bytes: u64,
    /// When it was offered.
    pub offered_at: u64,
    /// Last change.
    pub updated_at: u64,
    /// Changes of state the device reported so far (see [`MAX_JOB_TRANSITIONS`]).
    #[serde(default)]
    pub transitions: u32,
}

/// Changes of state a device may report for one update before only its end is accepted. A
/// resumed download may go back and forth a few times; a device that keeps flipping would
/// otherwise write an audited state change per report without end.
pub const MAX_JOB_TRANSITIONS: u32 = 32;

impl FirmwareJob {
    /// The job of `release` in `campaign`, starting in `state` at `now`.
    pub(crate) fn new(
        campaign: &str,
        release: &Release,
        url: Option<String>,
        state: JobState,
        now: u64,
    ) -> Self {
        FirmwareJob {
            campaign: campaign.to_string(),
            digest: release.digest.clone(),
            manifest: release.manifest.clone(),
            url,
            version: release.version.clone(),
            sequence: release.sequence,
            state,
            bytes: 0,
            offered_at: now,
            updated_at: now,
            transitions: 0,
        }
    }
}

impl JobState {
    /// Its stable name.
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Offered => "offered",
            JobState::Downloading => "downloading",
            JobState::Verified => "verified",
            JobState::Installed => "installed",
            JobState::Healthy => "healthy",
            JobState::RolledBack { .. } => "rolled-back",
            JobState::Failed { .. } => "failed",
            JobState::Skipped { .. } => "skipped",
            JobState::Cancelled => "cancelled",
        }
    }
}
