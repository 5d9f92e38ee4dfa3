//! The certificate of sanitization (NIST SP 800-88 Rev. 1, appendix G fields) of an attested
//! decommissioning, filled from the evidence the server verified: the device's signed wipe
//! attestation and the certificate that signed it.

use protocol::attestation::{WipeAttestation, WipeMethod};
use serde::{Deserialize, Serialize};

use super::error::LifecycleError;
use super::identity::DeviceId;
use super::record::DeviceRecord;
use super::state::DeviceState;

/// A certificate of sanitization.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SanitizationCertificate {
    /// Who performed the sanitization.
    pub person_performing: String,
    /// Organization responsible for the media.
    pub organization: String,
    /// Media manufacturer.
    pub manufacturer: String,
    /// Media model.
    pub model: String,
    /// Media serial number.
    pub serial_number: String,
    /// The device as this onboarder knows it: its manufacturer's maker id and its serial.
    pub device: DeviceId,
    /// Media type.
    pub media_type: String,
    /// Where the media came from.
    pub media_source: String,
    /// Sanitization description: Clear or Purge.
    pub sanitization_method: String,
    /// Technique, per target.
    pub sanitization_description: Vec<String>,
    /// Tool used, and its version.
    pub tool: String,
    /// Firmware running during the sanitization.
    pub firmware_version: String,
    /// Verification method, per target.
    pub verification_method: Vec<String>,
    /// Whether every target was verified.
    pub verified: bool,
    /// Post-sanitization destination.
    pub media_destination: String,
    /// When the sanitization started and ended (seconds since the epoch).
    pub started_on: u64,
    /// End.
    pub finished_on: u64,
    /// When the server verified the evidence.
    pub validated_on: u64,
    /// Who validated it.
    pub validated_by: String,
    /// The server's nonce the attestation answers, hex.
    pub nonce: String,
    /// SHA-256 of the signed attestation (COSE_Sign1), hex.
    pub attestation_sha256: String,
    /// The signed attestation itself (COSE_Sign1), hex: anyone can re-verify it with the
    /// signer certificate.
    pub attestation: String,
    /// The device certificate that signed it, PEM.
    pub signer_certificate: String,
    /// The application data handed to the owner before the sanitization, if it was: as the
    /// device attested it (signed, with the wipe) and the onboarder received it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_transfer: Option<DataTransfer>,
}

/// Data transferred to the owner before a sanitization (NIST IR 8259 Rev. 1: user data
/// transferred securely at end of life).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataTransfer {
    /// To whom: the age X25519 recipient it was encrypted to (only that key's holder reads it).
    pub recipient: String,
    /// SHA-256 of the ciphertext, hex.
    pub sha256: String,
    /// Its length in bytes.
    pub bytes: u64,
    /// When the onboarder had all of it (seconds since the epoch).
    pub received_on: Option<u64>,
}

fn method_name(m: WipeMethod) -> String {
    match m {
        WipeMethod::Clear => "Clear".into(),
        _ => "Purge".into(),
    }
}

/// The certificate of sanitization of `record`'s attested decommissioning, issued under
/// `organization`. A device that is not decommissioned with a verified attestation has none.
pub fn certify(
    record: &DeviceRecord,
    organization: &str,
) -> Result<SanitizationCertificate, LifecycleError> {
    let id = &record.id;
    let order = record.decommission.as_ref();
    let uncertifiable = || LifecycleError::WrongState {
        device: id.clone(),
        state: record.state,
        action: "certifying a sanitization without a verified wipe attestation",
    };
    let (Some(signed), Some(signer), Some(validated_on)) = (
        order.and_then(|o| o.attestation.as_ref()),
        order.and_then(|o| o.signer.as_ref()),
        order.and_then(|o| o.attested_at),
    ) else {
        return Err(uncertifiable());
    };
    if record.state != DeviceState::Decommissioned {
        return Err(uncertifiable());
    }
    // Verified when it was received; decoded here for its fields.
    let a = WipeAttestation::parse_unverified(signed)
        .map_err(|e| LifecycleError::Unavailable(format!("the stored attestation: {e}")))?;
    let organization = organization.to_string();
    Ok(SanitizationCertificate {
        person_performing: format!(
            "device agent {} on {} (automated), under the onboarder of {organization}",
            a.agent_version, a.serial
        ),
        organization: organization.clone(),
        manufacturer: a.manufacturer.clone(),
        model: a.model.clone(),
        serial_number: a.serial.clone(),
        device: record.id.clone(),
        media_type: "embedded non-volatile storage (flash) of an IoT device".into(),
        media_source: format!("device fleet of {organization}"),
        sanitization_method: method_name(a.method),
        sanitization_description: a
            .targets
            .iter()
            .map(|t| format!("{}: {} ({} bytes)", t.target, t.method, t.bytes))
            .collect(),
        tool: format!("device-agent {}", a.agent_version),
        firmware_version: a.firmware_version.clone(),
        verification_method: a
            .targets
            .iter()
            .map(|t| {
                format!(
                    "{}: {}, {}",
                    t.target,
                    t.verification,
                    if t.verified { "passed" } else { "FAILED" }
                )
            })
            .collect(),
        verified: a.all_verified(),
        media_destination:
            "returned to its factory state (birth identity kept); may be onboarded by a new owner"
                .into(),
        started_on: a.started_on,
        finished_on: a.finished_on,
        validated_on,
        validated_by: format!(
            "onboarder of {organization}: signature, nonce and freshness checked"
        ),
        nonce: certs::inspect::hex(&a.nonce),
        attestation_sha256: certs::inspect::hex(&protocol::manifest::sha256(signed)),
        attestation: certs::inspect::hex(signed),
        signer_certificate: certs::files::cert_pem(signer),
        data_transfer: a.exported.as_ref().map(|e| DataTransfer {
            recipient: e.recipient.clone(),
            sha256: certs::inspect::hex(&e.sha256),
            bytes: e.bytes,
            received_on: order
                .and_then(|o| o.export.as_ref())
                .and_then(|x| x.completed_at),
        }),
    })
}
