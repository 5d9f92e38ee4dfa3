//! Issuing an LDevID for a checked CSR, shared by enrollment and re-enrollment.

use protocol::message::{DeviceConfig, Enrollment, NetworkProfile, Response};
use serde_bytes::ByteBuf;

use super::error::LifecycleError;
use super::identity::DeviceId;
use super::policy::{Entropy, NetworkPolicy, Registrar};
use super::record::{CertStatus, DeviceRecord, IssuedCert};
use crate::audit::AuditEvent;

/// The outcome of an issuance: the response, and audit events (empty on an idempotent retry).
pub(crate) struct Issued {
    pub(crate) response: Response,
    pub(crate) events: Vec<AuditEvent>,
    pub(crate) changed: bool,
}

/// Issues (or, for a retry with the same key, re-sends) a certificate for `csr_key` to the
/// device in `record`. A different pending key replaces the pending certificate, which is
/// revoked: it was never confirmed and must never be used.
pub(crate) fn issue(
    reg: &Registrar,
    record: &mut DeviceRecord,
    checked: &certs::csr::CheckedCsr,
    kind: &str,
    now: u64,
    entropy: &Entropy,
) -> Result<Issued, LifecycleError> {
    let id = record.id.clone();
    // Credentials are made once per device, so a retry gets the same passphrase.
    let network = record
        .network
        .get_or_insert_with(|| network_profile(reg, &id, entropy))
        .clone();
    let key = checked.public_key.raw();
    if let Some(pending) = record.pending_certificate()
        && pending.public_key == key
    {
        return Ok(Issued {
            response: enrollment(reg, network, pending),
            events: Vec::new(),
            changed: false,
        });
    }
    if record.certificates.iter().any(|c| c.public_key == key) {
        return Err(certs::CsrError::KeyReuse.into());
    }
    let mut events = Vec::new();
    for cert in record
        .certificates
        .iter_mut()
        .filter(|c| c.status == CertStatus::Issued)
    {
        cert.status = CertStatus::Revoked {
            reason: certs::crl::Reason::Superseded,
            at: now,
        };
        events.push(AuditEvent::device(
            &id,
            "certificate-superseded",
            format!(
                "unconfirmed certificate {} replaced by a request with a new key",
                cert.serial
            ),
            now,
        ));
    }
    let validity = certs::Validity::starting(now, reg.policy.ldevid_lifetime);
    let name = id.to_string();
    let crl_url = reg
        .policy
        .crl_url
        .as_deref()
        .map(|base| format!("{base}/issuing-ca-{}.crl", reg.issuing.generation));
    let der = certs::profile::issue_ldevid(
        &reg.issuing.ca,
        &certs::profile::LdevidProfile {
            serial: &id.serial,
            common_name: &name,
            organization: &reg.policy.organization,
            crl_url: crl_url.as_deref(),
        },
        &checked.spki_der,
        validity,
        &entropy.cert_serial,
    )
    .map_err(|e| LifecycleError::Unavailable(format!("issuing the LDevID: {e}")))?;
    let cert = IssuedCert {
        serial: certs::inspect::hex(&entropy.cert_serial),
        der,
        public_key: key.to_vec(),
        issuer: reg.issuing.key_id.clone(),
        issued_at: now,
        not_after: validity.not_after,
        status: CertStatus::Issued,
    };
    events.push(AuditEvent::device(
        &id,
        "certificate-issued",
        format!(
            "{kind} {} from issuing CA {} valid until {}",
            cert.serial, reg.issuing.generation, cert.not_after
        ),
        now,
    ));
    let response = enrollment(reg, network, &cert);
    record.certificates.push(cert);
    record.updated_at = now;
    Ok(Issued {
        response,
        events,
        changed: true,
    })
}

fn network_profile(reg: &Registrar, id: &DeviceId, entropy: &Entropy) -> NetworkProfile {
    match &reg.policy.network {
        NetworkPolicy::Wifi { ssid } => NetworkProfile::Wifi {
            ssid: ssid.clone(),
            // 128 random bits as 32 hex characters: a valid WPA passphrase (8-63 characters).
            psk: certs::inspect::hex(&entropy.psk),
        },
        NetworkPolicy::EapTls { ssid } => NetworkProfile::EapTls {
            ssid: ssid.clone(),
            identity: id.to_string(),
            ca_chain: reg
                .issuing
                .chain
                .iter()
                .cloned()
                .map(ByteBuf::from)
                .collect(),
        },
    }
}

fn enrollment(reg: &Registrar, network: NetworkProfile, cert: &IssuedCert) -> Response {
    // The chain of the CA that issued this certificate (a retry after a rollover re-sends a
    // certificate of the previous generation).
    let chain = reg
        .generations()
        .find(|g| g.key_id == cert.issuer)
        .map_or(&reg.issuing.chain, |g| &g.chain);
    Response::Enrolled(Box::new(Enrollment {
        certificate: cert.der.clone(),
        chain: chain.iter().cloned().map(ByteBuf::from).collect(),
        network,
        config: DeviceConfig {
            server_name: reg.policy.server_name.clone(),
            heartbeat_secs: reg.policy.heartbeat_secs,
        },
    }))
}
