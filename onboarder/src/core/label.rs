//! Live security labels (NIST IR 8431, takeaway 9): a device's current security status, for
//! anyone holding the device, at a stable URL printed on its housing as a QR code.
//!
//! A label reveals no secret: no key, no credential, no network detail, nothing of the owner's
//! inventory (tags, attributes). The owner chooses which of the fields below it shows, and the
//! base URL it is published under (behind their own proxy, for instance).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::DeviceState;
use super::record::DeviceRecord;
use super::release::Release;
use super::support::{SupportPeriod, SupportStatus};
use super::vex::{Exposure, Statement};

/// What a label may show.
#[derive(
    utoipa::ToSchema,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum LabelField {
    /// The manufacturer's name.
    Manufacturer,
    /// The device class (model).
    Model,
    /// The serial number.
    Serial,
    /// The firmware version, and whether it is the newest release of the class.
    Firmware,
    /// Whether the device's operational certificate is valid, and until when.
    Certificate,
    /// When security updates end.
    Support,
    /// Known vulnerabilities of the firmware it runs, from the owner's VEX statements.
    Vulnerabilities,
    /// Whether the device was decommissioned (wiped, its credentials revoked).
    Decommissioned,
    /// A link to the SBOM of the firmware it runs.
    Sbom,
}

impl LabelField {
    /// Every field, in display order.
    pub const ALL: [LabelField; 9] = [
        LabelField::Manufacturer,
        LabelField::Model,
        LabelField::Serial,
        LabelField::Firmware,
        LabelField::Certificate,
        LabelField::Support,
        LabelField::Vulnerabilities,
        LabelField::Decommissioned,
        LabelField::Sbom,
    ];
}

/// The owner's choices for labels.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSettings {
    /// Where labels are published (`https://labels.example/d`); a label is at
    /// `BASE/TOKEN`. None: this onboarder's HTTPS listener, `/label`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The fields labels show.
    #[serde(default = "LabelSettings::every_field")]
    pub show: BTreeSet<LabelField>,
}

impl Default for LabelSettings {
    fn default() -> Self {
        LabelSettings {
            base_url: None,
            show: LabelSettings::every_field(),
        }
    }
}

impl LabelSettings {
    fn every_field() -> BTreeSet<LabelField> {
        LabelField::ALL.into_iter().collect()
    }

    /// Refuses a base URL that is not HTTP(S) or is too long to fit in a QR code with its
    /// token.
    pub fn validate(&self) -> Result<(), super::LifecycleError> {
        if let Some(base) = &self.base_url
            && (!(base.starts_with("https://") || base.starts_with("http://"))
                || base.len() > 512
                || base.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(super::LifecycleError::BadRequest(format!(
                "base_url {base:?}: an http(s) URL of at most 512 characters"
            )));
        }
        Ok(())
    }
}

/// The firmware a device runs, on its label.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareFacts {
    /// Its version, as the device reports it.
    pub version: String,
    /// Whether it is the newest release of its class the owner holds (unknown when the owner
    /// holds no release of the class).
    pub current: Option<bool>,
    /// The newest release of its class, when it is not that.
    pub newest: Option<String>,
}

/// The device's operational certificate, on its label.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateFacts {
    /// Whether it holds a live, unexpired one.
    pub valid: bool,
    /// When it expires (seconds since the epoch).
    pub not_after: Option<u64>,
}

/// The support period, on a label.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupportFacts {
    /// Where the device stands.
    pub status: SupportStatus,
    /// When security updates end (`YYYY-MM-DD`), if the owner said.
    pub ends_on: Option<String>,
}

/// Known vulnerabilities, on a label.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VulnerabilityFacts {
    /// `affected` (at least one statement says so), `not-affected` (statements exist for the
    /// firmware it runs and none says it is exposed) or `unknown` (none exist, or the
    /// firmware is not a release on record).
    pub status: String,
    /// What it is exposed to, with the release that fixes each.
    pub exposures: Vec<Exposure>,
}

/// A device's live label. Fields the owner does not show are absent.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// Where the label is published.
    pub url: String,
    /// When the facts were read (seconds since the epoch).
    pub as_of: u64,
    /// Manufacturer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Model (device class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Serial number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Firmware.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareFacts>,
    /// Operational certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateFacts>,
    /// Security updates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub support: Option<SupportFacts>,
    /// Known vulnerabilities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vulnerabilities: Option<VulnerabilityFacts>,
    /// Whether it was decommissioned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decommissioned: Option<bool>,
    /// The SBOM of the firmware it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sbom: Option<String>,
}

/// What a label is made from.
pub struct LabelFacts<'a> {
    /// The device.
    pub record: &'a DeviceRecord,
    /// Its manufacturer's name, if the owner named the anchor.
    pub manufacturer: Option<String>,
    /// Every release on record.
    pub releases: &'a [Release],
    /// Every VEX statement on record.
    pub statements: &'a [Statement],
    /// The support period of its class.
    pub support: Option<&'a SupportPeriod>,
    /// Where the label is published.
    pub url: String,
    /// The time.
    pub now: u64,
}

/// The release a device runs: of its class, at the sequence it reports.
pub fn running<'a>(record: &DeviceRecord, releases: &'a [Release]) -> Option<&'a Release> {
    let class = record.class_id.as_deref()?;
    releases
        .iter()
        .find(|r| r.class_id == class && r.sequence == record.firmware_sequence)
}

/// The vulnerability status of the device of `record`.
pub fn vulnerabilities(
    record: &DeviceRecord,
    releases: &[Release],
    statements: &[Statement],
) -> VulnerabilityFacts {
    let Some(release) = running(record, releases) else {
        return VulnerabilityFacts {
            status: "unknown".into(),
            exposures: Vec::new(),
        };
    };
    let exposures = super::vex::exposure(release, releases, statements);
    let digest = hex::encode(&release.digest);
    let status = if !exposures.is_empty() {
        "affected"
    } else if statements.iter().any(|s| s.release == digest) {
        "not-affected"
    } else {
        "unknown"
    };
    VulnerabilityFacts {
        status: status.into(),
        exposures,
    }
}

/// The label of a device, with the fields in `show`.
pub fn label(facts: LabelFacts<'_>, show: &BTreeSet<LabelField>) -> Label {
    let r = facts.record;
    let on = |f: LabelField| show.contains(&f);
    let decommissioned = matches!(
        r.state,
        DeviceState::Decommissioned | DeviceState::DecommissionedUnattested
    );
    let firmware = r.firmware_version.as_ref().map(|version| {
        let newest = r.class_id.as_deref().and_then(|class| {
            facts
                .releases
                .iter()
                .filter(|rel| rel.class_id == class)
                .max_by_key(|rel| rel.sequence)
        });
        FirmwareFacts {
            version: version.clone(),
            current: newest.map(|n| n.sequence <= r.firmware_sequence),
            newest: newest
                .filter(|n| n.sequence > r.firmware_sequence)
                .map(|n| n.version.clone()),
        }
    });
    let active = r
        .active_certificate()
        .filter(|c| !decommissioned && c.not_after > facts.now);
    let running = running(r, facts.releases);
    Label {
        as_of: facts.now,
        manufacturer: facts.manufacturer.filter(|_| on(LabelField::Manufacturer)),
        model: r.class_id.clone().filter(|_| on(LabelField::Model)),
        serial: Some(r.id.serial.clone()).filter(|_| on(LabelField::Serial)),
        firmware: firmware.filter(|_| on(LabelField::Firmware)),
        certificate: on(LabelField::Certificate).then(|| CertificateFacts {
            valid: active.is_some(),
            not_after: active.map(|c| c.not_after),
        }),
        support: on(LabelField::Support).then(|| SupportFacts {
            status: super::support::status_of(facts.support, facts.now),
            ends_on: facts.support.map(|p| super::support::date(p.ends_on)),
        }),
        vulnerabilities: on(LabelField::Vulnerabilities)
            .then(|| vulnerabilities(r, facts.releases, facts.statements)),
        decommissioned: on(LabelField::Decommissioned).then_some(decommissioned),
        sbom: running
            .filter(|rel| rel.sbom.is_some() && on(LabelField::Sbom))
            .map(|_| format!("{}/sbom", facts.url)),
        url: facts.url,
    }
}
