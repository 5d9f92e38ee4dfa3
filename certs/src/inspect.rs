//! Reading certificates back: the identity fields our profiles put in, and what validation
//! and policy need (keys, validity, key identifiers, usages).

use protocol::keys::PublicKey;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::Oid;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::der;
use crate::error::CertError;
use crate::key::public_key_from_spki;

/// A hardwareModuleName otherName (RFC 4108).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardwareModuleName {
    /// The hardware type OID, dotted.
    pub hw_type: String,
    /// The hardware serial number.
    pub hw_serial: Vec<u8>,
}

/// The fields of a certificate that this system reads.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Subject serialNumber attribute (the device serial for IDevIDs and LDevIDs).
    pub subject_serial: Option<String>,
    /// Subject commonName, if any.
    pub common_name: Option<String>,
    /// Subject organizationName, if any.
    pub organization: Option<String>,
    /// Subject, as text.
    pub subject: String,
    /// Issuer, as text.
    pub issuer: String,
    /// hardwareModuleName from the subjectAltName, if any.
    pub hardware_module: Option<HardwareModuleName>,
    /// MUD URL extension, if any.
    pub mud_url: Option<String>,
    /// MASA URL extension, if any.
    pub masa_url: Option<String>,
    /// The subject public key.
    pub public_key: PublicKey,
    /// The whole SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
    /// Certificate serial number, lowercase hex.
    pub serial_hex: String,
    /// notBefore, seconds since the epoch.
    pub not_before: u64,
    /// notAfter, seconds since the epoch.
    pub not_after: u64,
    /// Authority key identifier, if present.
    pub authority_key_id: Option<Vec<u8>>,
    /// Subject key identifier, if present.
    pub subject_key_id: Option<Vec<u8>>,
    /// basicConstraints CA flag.
    pub is_ca: bool,
    /// EKU includes clientAuth.
    pub client_auth: bool,
    /// EKU includes serverAuth.
    pub server_auth: bool,
    /// EKU includes id-kp-cmcRA.
    pub cmc_ra: bool,
}

impl CertInfo {
    /// Parses a DER certificate. Trailing bytes are refused.
    pub fn parse(der_bytes: &[u8]) -> Result<CertInfo, CertError> {
        let (rest, cert) =
            X509Certificate::from_der(der_bytes).map_err(|e| CertError::parse("certificate", e))?;
        if !rest.is_empty() {
            return Err(CertError::parse("certificate", "trailing bytes"));
        }
        let subject_serial = cert
            .subject()
            .iter_attributes()
            .find(|a| oid_is(a.attr_type(), der::OID_SERIAL_NUMBER))
            .and_then(|a| a.as_str().ok())
            .map(str::to_string);
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string);
        let organization = cert
            .subject()
            .iter_organization()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string);
        let mut info = CertInfo {
            subject_serial,
            common_name,
            organization,
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            hardware_module: None,
            mud_url: None,
            masa_url: None,
            public_key: public_key_from_spki(cert.public_key())?,
            spki_der: cert.public_key().raw.to_vec(),
            serial_hex: hex(cert.raw_serial()),
            not_before: to_secs(cert.validity().not_before.timestamp()),
            not_after: to_secs(cert.validity().not_after.timestamp()),
            authority_key_id: None,
            subject_key_id: None,
            is_ca: cert.is_ca(),
            client_auth: false,
            server_auth: false,
            cmc_ra: false,
        };
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        if let GeneralName::OtherName(type_id, value) = name
                            && oid_is(type_id, der::OID_HARDWARE_MODULE_NAME)
                        {
                            let (hw_type, hw_serial) = der::parse_hardware_module_name(value)
                                .map_err(|e| CertError::parse("hardwareModuleName", e))?;
                            info.hardware_module = Some(HardwareModuleName { hw_type, hw_serial });
                        }
                    }
                }
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    info.authority_key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec());
                }
                ParsedExtension::SubjectKeyIdentifier(ski) => {
                    info.subject_key_id = Some(ski.0.to_vec());
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    info.client_auth = eku.client_auth;
                    info.server_auth = eku.server_auth;
                    info.cmc_ra = eku.other.iter().any(|o| oid_is(o, der::OID_KP_CMC_RA));
                }
                _ if oid_is(&ext.oid, der::OID_MUD_URL) => {
                    info.mud_url = Some(
                        der::parse_ia5_string(ext.value)
                            .map_err(|e| CertError::parse("MUD URL", e))?,
                    );
                }
                _ if oid_is(&ext.oid, der::OID_MASA_URL) => {
                    info.masa_url = Some(
                        der::parse_ia5_string(ext.value)
                            .map_err(|e| CertError::parse("MASA URL", e))?,
                    );
                }
                _ => {}
            }
        }
        Ok(info)
    }

    /// The device serial in the subject, or an error naming what is missing.
    pub fn device_serial(&self) -> Result<&str, CertError> {
        self.subject_serial
            .as_deref()
            .ok_or_else(|| CertError::Profile("certificate has no subject serialNumber".into()))
    }
}

fn oid_is(oid: &Oid<'_>, components: &[u64]) -> bool {
    oid.iter()
        .is_some_and(|it| it.eq(components.iter().copied()))
}

fn to_secs(ts: i64) -> u64 {
    u64::try_from(ts).unwrap_or(0)
}

/// Lowercase hex of bytes (certificate serials, key identifiers, digests).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Bytes from lowercase or uppercase hex; `None` if `text` is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
