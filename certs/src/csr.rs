//! PKCS#10 requests: built by the device, checked by the server.
//!
//! The CSR's signature is the proof of possession of the new key. Its challengePassword
//! attribute carries the hex TLS exporter value of the session it was made in (EST, RFC 7030 3.5,
//! with an exporter instead of tls-unique as RFC 9266 does for TLS 1.3), so a CSR captured from
//! one session is refused in another.

use protocol::keys::PublicKey;
use rcgen::{Attribute, CertificateParams};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::prelude::FromDer;

use crate::der;
use crate::error::{CertError, CsrError};
use crate::inspect::hex;
use crate::key::public_key_from_spki;
use crate::profile::device_subject;

/// Largest CSR accepted.
pub const MAX_CSR: usize = 8 * 1024;

/// Builds a CSR for `key` with subject serialNumber = CN = `serial`, bound to a session by
/// `binding` (the TLS exporter value). `key` is any signer rcgen can use, so a key held in a
/// secure element can sign its own CSR.
pub fn build_csr(
    serial: &str,
    key: &impl rcgen::SigningKey,
    binding: &[u8],
) -> Result<Vec<u8>, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = device_subject(serial, serial, "device")?;
    let attrs = vec![Attribute {
        oid: der::OID_CHALLENGE_PASSWORD,
        values: der::utf8_string_set(&hex(binding)),
    }];
    Ok(params
        .serialize_request_with_attributes(key, attrs)?
        .der()
        .to_vec())
}

/// Builds the CSR of a device's birth key, made on the device (in its secure element), for the
/// factory to certify as its IDevID ([`crate::factory::Manufacturer::certify`]): subject
/// serialNumber = CN = `serial`, no session binding (the factory line is the trusted channel).
pub fn build_birth_csr(serial: &str, key: &impl rcgen::SigningKey) -> Result<Vec<u8>, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = device_subject(serial, serial, "device")?;
    Ok(params.serialize_request(key)?.der().to_vec())
}

/// What a well-formed CSR with a valid self-signature asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCsr {
    /// The subject serialNumber (empty when there is none).
    pub serial: String,
    /// The requested key.
    pub public_key: PublicKey,
    /// The requested key as DER SubjectPublicKeyInfo, for issuance.
    pub spki_der: Vec<u8>,
    /// The challengePassword (the session binding), if any.
    pub binding: Option<String>,
}

/// Decodes a CSR within the size limit and checks its self-signature (the proof of
/// possession of the key).
pub fn parse_csr(der_bytes: &[u8]) -> Result<ParsedCsr, CsrError> {
    if der_bytes.len() > MAX_CSR {
        return Err(CsrError::Malformed(format!(
            "{} bytes exceeds the limit of {MAX_CSR}",
            der_bytes.len()
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(der_bytes)
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed("trailing bytes".into()));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let info = &csr.certification_request_info;
    let serial = info
        .subject
        .iter_attributes()
        .find(|a| {
            a.attr_type()
                .iter()
                .is_some_and(|it| it.eq(der::OID_SERIAL_NUMBER.iter().copied()))
        })
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let public_key = public_key_from_spki(&info.subject_pki).map_err(|_| CsrError::KeyType)?;
    let binding = info
        .iter_attributes()
        .find_map(|a| match a.parsed_attribute() {
            ParsedCriAttribute::ChallengePassword(p) => Some(p.0.clone()),
            _ => None,
        });
    Ok(ParsedCsr {
        serial,
        public_key,
        spki_der: info.subject_pki.raw.to_vec(),
        binding,
    })
}

/// What the server requires of a CSR.
#[derive(Debug, Clone, Copy)]
pub struct CsrPolicy<'a> {
    /// The authenticated device's serial; the subject serialNumber must equal it.
    pub serial: &'a str,
    /// The exporter value of the session the CSR arrived on.
    pub binding: &'a [u8],
    /// Whether the CSR must carry it (our protocol always does; an EST client may not be able
    /// to, and the owner's policy decides). A binding present must match either way.
    pub binding_required: bool,
    /// Keys the new certificate must not reuse (the IDevID key; on re-key, the current key).
    pub forbidden_keys: &'a [PublicKey],
}

/// A CSR that passed the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCsr {
    /// The requested key.
    pub public_key: PublicKey,
    /// The requested key as DER SubjectPublicKeyInfo, for issuance.
    pub spki_der: Vec<u8>,
}

/// Whether a challengePassword carries `binding`: hex (our agent), or base64 as RFC 7030 3.5
/// puts a channel binding value (the RFC 9266 tls-exporter value, for EST clients).
fn binds(value: &str, binding: &[u8]) -> bool {
    use base64::Engine;
    let value = value.trim();
    value.eq_ignore_ascii_case(&hex(binding))
        || base64::engine::general_purpose::STANDARD
            .decode(value)
            .is_ok_and(|decoded| decoded == binding)
}

/// Checks a CSR: well-formed, self-signature valid, subject is the device's serial, key type
/// accepted and fresh, and bound to this session.
pub fn check_csr(der_bytes: &[u8], policy: &CsrPolicy<'_>) -> Result<CheckedCsr, CsrError> {
    let csr = parse_csr(der_bytes)?;
    if csr.serial != policy.serial {
        return Err(CsrError::WrongSubject {
            expected: policy.serial.to_string(),
            found: csr.serial,
        });
    }
    if policy.forbidden_keys.contains(&csr.public_key) {
        return Err(CsrError::KeyReuse);
    }
    match csr.binding.as_deref() {
        Some(value) if binds(value, policy.binding) => {}
        None if !policy.binding_required => {}
        _ => return Err(CsrError::BindingMismatch),
    }
    Ok(CheckedCsr {
        public_key: csr.public_key,
        spki_der: csr.spki_der,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyKind, KeyPair};

    fn policy<'a>(forbidden: &'a [PublicKey]) -> CsrPolicy<'a> {
        CsrPolicy {
            serial: "SN-1",
            binding: &[7; 32],
            binding_required: true,
            forbidden_keys: forbidden,
        }
    }

    /// A CSR without a binding passes only where the policy does not require one; a binding
    /// is read in hex or base64, and a wrong one never passes.
    #[test]
    fn a_binding_is_required_or_optional_but_never_wrong() {
        let key = KeyPair::generate(KeyKind::P256).unwrap();
        let unbound = build_birth_csr("SN-1", &key).unwrap();
        assert_eq!(
            check_csr(&unbound, &policy(&[])),
            Err(CsrError::BindingMismatch)
        );
        let optional = CsrPolicy {
            binding_required: false,
            ..policy(&[])
        };
        assert!(check_csr(&unbound, &optional).is_ok());
        let wrong = build_csr("SN-1", &key, &[8; 32]).unwrap();
        assert_eq!(check_csr(&wrong, &optional), Err(CsrError::BindingMismatch));
        assert!(binds(&hex(&[7; 32]).to_uppercase(), &[7; 32]));
        assert!(binds(
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
            &[7; 32]
        ));
        assert!(!binds("BwcH", &[7; 32]));
    }

    #[test]
    fn accepts_a_good_csr_of_either_key_kind() {
        for kind in [KeyKind::P256, KeyKind::P384, KeyKind::Ed25519] {
            let key = KeyPair::generate(kind).unwrap();
            let csr = build_csr("SN-1", &key, &[7; 32]).unwrap();
            let checked = check_csr(&csr, &policy(&[])).unwrap();
            assert_eq!(checked.public_key, key.public_key());
        }
    }

    #[test]
    fn refusals() {
        let key = KeyPair::generate(KeyKind::P256).unwrap();
        let csr = build_csr("SN-2", &key, &[7; 32]).unwrap();
        assert!(matches!(
            check_csr(&csr, &policy(&[])),
            Err(CsrError::WrongSubject { .. })
        ));
        let csr = build_csr("SN-1", &key, &[8; 32]).unwrap();
        assert_eq!(
            check_csr(&csr, &policy(&[])),
            Err(CsrError::BindingMismatch)
        );
        let csr = build_csr("SN-1", &key, &[7; 32]).unwrap();
        assert_eq!(
            check_csr(&csr, &policy(&[key.public_key()])),
            Err(CsrError::KeyReuse)
        );
        let mut tampered = csr.clone();
        let at = tampered.len() - 10;
        tampered[at] ^= 0x01;
        assert!(matches!(
            check_csr(&tampered, &policy(&[])),
            Err(CsrError::BadSignature | CsrError::Malformed(_))
        ));
        // Change one byte of the subject (inside the signed part): the signature fails.
        let pos = csr.windows(4).position(|w| w == b"SN-1").unwrap();
        let mut tampered = csr.clone();
        tampered[pos + 3] = b'2';
        assert_eq!(
            check_csr(&tampered, &policy(&[])),
            Err(CsrError::BadSignature)
        );
        assert!(matches!(
            check_csr(b"garbage", &policy(&[])),
            Err(CsrError::Malformed(_))
        ));
        assert!(matches!(
            check_csr(&vec![0x30; MAX_CSR + 1], &policy(&[])),
            Err(CsrError::Malformed(_))
        ));
    }
}
