//! The device-side checks of BRSKI (RFC 8995 5.6) and of enrollment, as pure functions.
//!
//! Order (DESIGN 3): the device accepts the registrar's certificate provisionally; sends a
//! voucher request; checks the voucher ([`accept_voucher`]): signed by its manufacturer, its
//! serial and IDevID issuer, fresh; then checks that the registrar's certificate chains to the
//! CA the voucher pins ([`check_registrar`]). Only then does it send a CSR, and it stores the
//! enrollment only if the LDevID is for its own key and serial and chains to that CA
//! ([`check_enrollment`]).

use certs::chain::{self, Usage};
use certs::{CertInfo, Identity};
use protocol::keys::PublicKey;
use protocol::message::Enrollment;
use protocol::voucher::{Assertion, Voucher, VoucherExpectation, VoucherRequest};

use crate::error::AgentError;

/// The voucher request for this session.
pub fn voucher_request(
    identity: &Identity,
    nonce: &[u8],
    registrar_cert: &[u8],
    session_binding: &[u8],
    now: u64,
) -> VoucherRequest {
    VoucherRequest {
        created_on: now,
        assertion: Assertion::Proximity,
        serial_number: identity.serial.clone(),
        nonce: nonce.to_vec(),
        proximity_registrar_cert: registrar_cert.to_vec(),
        session_binding: session_binding.to_vec(),
    }
}

/// Verifies a voucher: the manufacturer's signature (with the voucher-signing key from the
/// factory), this device's serial and IDevID issuer, and freshness.
pub fn accept_voucher(
    identity: &Identity,
    signed: &[u8],
    nonce: &[u8],
    now: u64,
) -> Result<Voucher, AgentError> {
    let voucher = Voucher::open(signed, &identity.masa_info.public_key)?;
    voucher.check(
        &VoucherExpectation {
            serial: &identity.serial,
            idevid_issuer: identity.idevid_issuer(),
            nonce,
        },
        now,
    )?;
    if let Some(expires_on) = voucher.expires_on {
        // A voucher may not outlive the CA it pins (RFC 8366bis).
        let pinned = CertInfo::parse(&voucher.pinned_domain_cert)
            .map_err(|e| AgentError::RogueRegistrar(format!("pinned-domain-cert: {e}")))?;
        if expires_on > pinned.not_after {
            return Err(AgentError::RogueRegistrar(
                "the voucher outlives the CA it pins".into(),
            ));
        }
    }
    Ok(voucher)
}

/// Checks the registrar's certificate chain (as presented in the TLS handshake) against the
/// CA the voucher pins, and that it is marked as a registrar (id-kp-cmcRA, RFC 8995 2.6).
pub fn check_registrar(
    pinned_ca: &[u8],
    presented: &[Vec<u8>],
    now: u64,
) -> Result<(), AgentError> {
    let (leaf, intermediates) = presented
        .split_first()
        .ok_or_else(|| AgentError::RogueRegistrar("no registrar certificate".into()))?;
    chain::verify(
        leaf,
        intermediates,
        &[pinned_ca.to_vec()],
        now,
        Usage::ServerAuth,
    )
    .map_err(|e| AgentError::RogueRegistrar(format!("registrar certificate: {e}")))?;
    let info = CertInfo::parse(leaf).map_err(|e| AgentError::RogueRegistrar(e.to_string()))?;
    if !info.cmc_ra {
        return Err(AgentError::RogueRegistrar(
            "registrar certificate lacks id-kp-cmcRA".into(),
        ));
    }
    Ok(())
}

/// Checks an enrollment before storing it: the LDevID is for `key`, names this device, and
/// chains through the given CA certificates to the pinned CA.
pub fn check_enrollment(
    enrollment: &Enrollment,
    serial: &str,
    key: &PublicKey,
    pinned_ca: &[u8],
    now: u64,
) -> Result<CertInfo, AgentError> {
    let bad = |m: String| AgentError::BadEnrollment(m);
    let info = CertInfo::parse(&enrollment.certificate).map_err(|e| bad(e.to_string()))?;
    if info.subject_serial.as_deref() != Some(serial) {
        return Err(bad(format!(
            "LDevID names {:?}, not this device",
            info.subject_serial
        )));
    }
    if &info.public_key != key {
        return Err(bad("LDevID is not for the key this device requested".into()));
    }
    let intermediates: Vec<Vec<u8>> = enrollment.chain.iter().map(|c| c.to_vec()).collect();
    chain::verify(
        &enrollment.certificate,
        &intermediates,
        &[pinned_ca.to_vec()],
        now,
        Usage::ClientAuth,
    )
    .map_err(|e| bad(format!("LDevID chain: {e}")))?;
    Ok(info)
}

/// What `onboard` has left to do, from the stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remaining {
    /// Nothing: onboarded and confirmed.
    Nothing,
    /// The enrollment is stored but the server has not heard so: confirm it.
    Confirm,
    /// Everything: voucher, checks, CSR, enrollment.
    Enroll,
}

/// What is left of onboarding for a device in `state`.
pub fn remaining(state: &crate::machine::AgentState) -> Remaining {
    match state.phase {
        crate::machine::Phase::Enrolled { confirmed: true } => Remaining::Nothing,
        crate::machine::Phase::Enrolled { confirmed: false } => Remaining::Confirm,
        crate::machine::Phase::Factory => Remaining::Enroll,
    }
}
