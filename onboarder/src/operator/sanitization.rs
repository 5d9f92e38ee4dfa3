//! Decommissioning for operators: orders, forced decommissioning, and the certificate of
//! sanitization (the fields of NIST SP 800-88 Rev. 1, appendix G) filled from the verified
//! evidence, as JSON and as a printable HTML document.

use protocol::attestation::{WipeAttestation, WipeMethod};
use serde::{Deserialize, Serialize};

use super::OperatorError;
use super::orders::OrderReport;
use crate::core::{self, DeviceId, DeviceState};
use crate::service::Service;

/// A certificate of sanitization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

fn method_name(m: WipeMethod) -> String {
    match m {
        WipeMethod::Clear => "Clear".into(),
        _ => "Purge".into(),
    }
}

impl Service {
    /// Orders devices to wipe themselves with `method`.
    pub async fn decommission(
        &self,
        devices: Vec<DeviceId>,
        method: WipeMethod,
    ) -> Result<OrderReport, OperatorError> {
        let mut report = OrderReport {
            at: self.now(),
            ..OrderReport::default()
        };
        for chunk in devices.chunks(1000) {
            self.order_chunk(chunk, &mut report, |id, record, now| {
                core::decommission::order(id, record, method, &self.nonce()?, now)
            })
            .await?;
        }
        Ok(report)
    }

    /// Decommissions a device that does not answer, without attestation.
    pub async fn force_decommission(
        &self,
        id: &DeviceId,
        reason: &str,
    ) -> Result<core::DeviceRecord, OperatorError> {
        self.decide_and_commit(id, |record, now| {
            core::decommission::force(id, record, reason, now)
        })
        .await?;
        self.device(id)
    }

    /// The certificate of sanitization of an attested decommissioning.
    pub fn sanitization_certificate(
        &self,
        id: &DeviceId,
    ) -> Result<SanitizationCertificate, OperatorError> {
        let record = self.device(id)?;
        let order = record.decommission.as_ref();
        let (Some(signed), Some(signer), Some(validated_on)) = (
            order.and_then(|o| o.attestation.as_ref()),
            order.and_then(|o| o.signer.as_ref()),
            order.and_then(|o| o.attested_at),
        ) else {
            return Err(OperatorError::BadInput(format!(
                "{id} is {}: there is no verified wipe attestation to certify",
                record.state
            )));
        };
        if record.state != DeviceState::Decommissioned {
            return Err(OperatorError::BadInput(format!("{id} is {}", record.state)));
        }
        // Verified when it was received; decoded here for its fields.
        let a = WipeAttestation::parse_unverified(signed)
            .map_err(|e| OperatorError::Internal(format!("the stored attestation: {e}")))?;
        let organization = self.registrar().policy.organization.clone();
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
            validated_by: format!("onboarder of {organization}: signature, nonce and freshness checked"),
            nonce: certs::inspect::hex(&a.nonce),
            attestation_sha256: certs::inspect::hex(&protocol::manifest::sha256(signed)),
            attestation: certs::inspect::hex(signed),
            signer_certificate: certs::files::cert_pem(signer),
        })
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn utc(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

impl SanitizationCertificate {
    /// A printable HTML document.
    pub fn to_html(&self) -> String {
        let row =
            |k: &str, v: &str| format!("<tr><th>{}</th><td>{}</td></tr>\n", escape(k), escape(v));
        let rows = |k: &str, vs: &[String]| row(k, &vs.join("; "));
        let mut body = String::new();
        body.push_str("<h2>Person performing sanitization</h2><table>\n");
        body.push_str(&row("Performed by", &self.person_performing));
        body.push_str(&row("Organization", &self.organization));
        body.push_str("</table><h2>Media information</h2><table>\n");
        body.push_str(&row("Manufacturer", &self.manufacturer));
        body.push_str(&row("Model", &self.model));
        body.push_str(&row("Serial number", &self.serial_number));
        body.push_str(&row("Media type", &self.media_type));
        body.push_str(&row("Media source", &self.media_source));
        body.push_str("</table><h2>Sanitization details</h2><table>\n");
        body.push_str(&row("Method type", &self.sanitization_method));
        body.push_str(&rows("Method used", &self.sanitization_description));
        body.push_str(&row("Tool used (version)", &self.tool));
        body.push_str(&row("Firmware version", &self.firmware_version));
        body.push_str(&rows("Verification method", &self.verification_method));
        body.push_str(&row("Verified", if self.verified { "yes" } else { "NO" }));
        body.push_str(&row("Started", &utc(self.started_on)));
        body.push_str(&row("Finished", &utc(self.finished_on)));
        body.push_str("</table><h2>Media destination</h2><table>\n");
        body.push_str(&row("Destination", &self.media_destination));
        body.push_str("</table><h2>Validation</h2><table>\n");
        body.push_str(&row("Validated by", &self.validated_by));
        body.push_str(&row("Date", &utc(self.validated_on)));
        body.push_str(&row("Server nonce", &self.nonce));
        body.push_str(&row("Attestation SHA-256", &self.attestation_sha256));
        body.push_str(
            "</table><h2>Evidence</h2><p>Signed wipe attestation (COSE_Sign1, hex):</p>\n",
        );
        body.push_str(&format!(
            "<pre class=\"hex\">{}</pre>\n",
            escape(&self.attestation)
        ));
        body.push_str("<p>Signed by the device certificate:</p>\n");
        body.push_str(&format!(
            "<pre>{}</pre>\n",
            escape(&self.signer_certificate)
        ));
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
             <title>Certificate of Sanitization: {serial}</title>\n\
             <style>body{{font-family:sans-serif;max-width:52em;margin:2em auto}}\
             table{{border-collapse:collapse;width:100%}}th,td{{border:1px solid #999;padding:.3em;\
             text-align:left;vertical-align:top}}th{{width:14em;background:#eee}}\
             pre{{white-space:pre-wrap;word-break:break-all;font-size:.75em}}\
             @media print{{body{{margin:0}}}}</style></head><body>\n\
             <h1>Certificate of Sanitization</h1>\n\
             <p>After NIST SP 800-88 Rev. 1, appendix G. Filled from the device's signed wipe \
             attestation, verified by the onboarder.</p>\n{body}</body></html>\n",
            serial = escape(&self.serial_number)
        )
    }
}
