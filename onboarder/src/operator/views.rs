//! JSON views of records for operators and scripts. Secrets (the Wi-Fi passphrase) are never
//! included.

use serde::{Deserialize, Serialize};

use crate::audit::{AuditEntry, AuditEvent};
use crate::core::{CertStatus, DeviceId, DeviceRecord, DeviceState, MakerId, Registrar};
use crate::store::Anchor;
use protocol::message::NetworkProfile;

/// A device.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// The device: `MAKER/SERIAL`.
    pub id: DeviceId,
    /// Its maker (the manufacturer anchor its IDevID chains to).
    pub maker: MakerId,
    /// Its serial.
    pub serial: String,
    /// Lifecycle state.
    pub state: DeviceState,
    /// Record version.
    pub version: u64,
    /// Created (seconds since the epoch).
    pub created_at: u64,
    /// Last change.
    pub updated_at: u64,
    /// Voucher expiry.
    pub voucher_expires_on: Option<u64>,
    /// Certificates issued, oldest first.
    pub certificates: Vec<CertView>,
    /// Network credential kind and SSID.
    pub network: Option<NetworkView>,
    /// Agent version last reported.
    pub agent_version: Option<String>,
    /// Firmware version last reported.
    pub firmware_version: Option<String>,
    /// Hardware facts last reported.
    #[serde(default)]
    pub hardware: std::collections::BTreeMap<String, String>,
    /// Why quarantined.
    pub quarantine_reason: Option<String>,
    /// Device class (model) last reported.
    #[serde(default)]
    pub class: Option<String>,
    /// Operator tags.
    #[serde(default)]
    pub tags: std::collections::BTreeSet<String>,
    /// Operator attributes.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
    /// Where the device stands against its class's support period.
    #[serde(default)]
    pub support: SupportView,
    /// The security events the device forwarded (each is an audit entry of it).
    #[serde(default)]
    pub security: crate::core::security::SecurityTally,
}

/// A device against its class's support period.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupportView {
    /// `unknown` (no period set for its class), `supported`, `ending` (within the notice
    /// period) or `unsupported`.
    pub status: Option<crate::core::support::SupportStatus>,
    /// When security updates end (seconds since the epoch), if a period is set.
    pub ends_on: Option<u64>,
    /// Whether the device confirmed it recorded the notice of that end date.
    pub notice_recorded: bool,
}

/// A certificate of a device.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertView {
    /// Serial number, hex.
    pub serial: String,
    /// Status.
    pub status: CertStatus,
    /// Issued at.
    pub issued_at: u64,
    /// notAfter.
    pub not_after: u64,
    /// Generation of the issuing CA that issued it, if it is still known.
    #[serde(default)]
    pub generation: Option<u32>,
    /// The certificate, PEM.
    pub pem: String,
}

/// Network credentials without their secret.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    /// `wifi` or `eap-tls`.
    pub kind: String,
    /// SSID.
    pub ssid: String,
}

impl DeviceView {
    /// The view of `r`, naming the issuing CA generation of each certificate, and where the
    /// device stands against its class's support period.
    pub fn new(r: &DeviceRecord, service: &crate::service::Service) -> Self {
        let registrar: std::sync::Arc<Registrar> = service.registrar();
        let mut view = DeviceView::from(r);
        for (cert, issued) in view.certificates.iter_mut().zip(&r.certificates) {
            cert.generation = registrar
                .generations()
                .find(|g| g.key_id == issued.issuer)
                .map(|g| g.generation);
        }
        let period = service.support_of(r.class_id.as_deref());
        view.support = SupportView {
            status: Some(crate::core::support::status_of(
                period.as_ref(),
                service.now(),
            )),
            ends_on: period.as_ref().map(|p| p.ends_on),
            notice_recorded: period
                .as_ref()
                .is_some_and(|p| r.support_notice == Some(p.ends_on)),
        };
        view
    }
}

impl From<&DeviceRecord> for DeviceView {
    fn from(r: &DeviceRecord) -> Self {
        DeviceView {
            id: r.id.clone(),
            maker: r.id.maker.clone(),
            serial: r.id.serial.clone(),
            state: r.state,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            voucher_expires_on: r.voucher_expires_on,
            certificates: r
                .certificates
                .iter()
                .map(|c| CertView {
                    serial: c.serial.clone(),
                    status: c.status.clone(),
                    issued_at: c.issued_at,
                    not_after: c.not_after,
                    generation: None,
                    pem: certs::files::cert_pem(&c.der),
                })
                .collect(),
            network: r.network.as_ref().map(|n| match n {
                NetworkProfile::Wifi { ssid, .. } => NetworkView {
                    kind: "wifi".into(),
                    ssid: ssid.clone(),
                },
                NetworkProfile::EapTls { ssid, .. } => NetworkView {
                    kind: "eap-tls".into(),
                    ssid: ssid.clone(),
                },
                _ => NetworkView {
                    kind: "other".into(),
                    ssid: String::new(),
                },
            }),
            agent_version: r.agent_version.clone(),
            firmware_version: r.firmware_version.clone(),
            hardware: r.hardware.clone(),
            quarantine_reason: r.quarantine_reason.clone(),
            class: r.class_id.clone(),
            tags: r.tags.clone(),
            attributes: r.attributes.clone(),
            support: SupportView::default(),
            security: r.security.clone(),
        }
    }
}

/// A manufacturer trust anchor.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorView {
    /// The maker it stands for.
    pub maker: MakerId,
    /// The operator's name for the maker.
    pub name: String,
    /// SHA-256 fingerprint, hex.
    pub fingerprint: String,
    /// Subject.
    pub subject: String,
    /// Whether vouchers are checked against the maker's voucher signer at import.
    pub voucher_signer: bool,
    /// Imported at.
    pub added_at: u64,
}

impl From<&Anchor> for AnchorView {
    fn from(a: &Anchor) -> Self {
        AnchorView {
            maker: a.maker.clone(),
            name: a.name.clone(),
            fingerprint: a.fingerprint.clone(),
            subject: a.subject.clone(),
            voucher_signer: a.masa.is_some(),
            added_at: a.added_at,
        }
    }
}

/// An audit entry with its hashes in hex.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntryView {
    /// Sequence number.
    pub seq: u64,
    /// Hash of the previous entry.
    pub prev: String,
    /// Hash of this entry.
    pub hash: String,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
}

impl From<&AuditEntry> for AuditEntryView {
    fn from(e: &AuditEntry) -> Self {
        AuditEntryView {
            seq: e.seq,
            prev: certs::inspect::hex(&e.prev),
            hash: certs::inspect::hex(&e.hash()),
            event: e.event.clone(),
        }
    }
}
