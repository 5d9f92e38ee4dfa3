//! What goes into each kind of certificate.
//!
//! - IDevID (IEEE 802.1AR, RFC 8995 2.3): subject serialNumber, hardwareModuleName otherName,
//!   optional MUD and MASA URLs, notAfter 99991231235959Z.
//! - LDevID: subject bound to the IDevID's serial, clientAuth, a lifetime in days.
//! - Registrar (onboarder) server certificate: serverAuth and id-kp-cmcRA.
//! - Voucher signer (the manufacturer's MASA key): digitalSignature only.

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, KeyUsagePurpose, SerialNumber,
};

use crate::ca::{Ca, Validity};
use crate::der;
use crate::error::CertError;

/// Longest device serial number accepted.
pub const MAX_SERIAL_LEN: usize = 64;

/// Checks that a device serial is 1 to 64 characters of `A-Z a-z 0-9 - .`, not starting with a
/// dot or dash. Serials become X.520 PrintableStrings and directory names, so nothing else is
/// allowed.
pub fn validate_serial(serial: &str) -> Result<(), CertError> {
    let ok = !serial.is_empty()
        && serial.len() <= MAX_SERIAL_LEN
        && serial
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !serial.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(CertError::Profile(format!(
            "invalid device serial {serial:?}: 1-{MAX_SERIAL_LEN} characters of A-Z a-z 0-9 - ."
        )))
    }
}

/// Subject of a device certificate: O, serialNumber (the device serial) and CN (the serial,
/// or the name the issuer gives the device).
pub(crate) fn device_subject(
    serial: &str,
    common_name: &str,
    organization: &str,
) -> Result<DistinguishedName, CertError> {
    validate_serial(serial)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(
        DnType::CustomDnType(der::OID_SERIAL_NUMBER.to_vec()),
        DnValue::PrintableString(serial.try_into()?),
    );
    dn.push(DnType::CommonName, common_name);
    Ok(dn)
}

/// The fields of an IDevID.
#[derive(Debug, Clone)]
pub struct IdevidProfile<'a> {
    /// Device serial number.
    pub serial: &'a str,
    /// Manufacturer name (subject O).
    pub manufacturer: &'a str,
    /// Hardware type OID of the hardwareModuleName.
    pub hw_type: &'a [u64],
    /// Optional MUD URL (RFC 8520).
    pub mud_url: Option<&'a str>,
    /// Optional MASA URL (RFC 8995 2.3.2).
    pub masa_url: Option<&'a str>,
}

/// Issues an IDevID for `subject`'s key.
pub fn issue_idevid(
    ca: &Ca,
    profile: &IdevidProfile<'_>,
    subject: &impl rcgen::PublicKeyData,
    cert_serial: &[u8],
    now: u64,
) -> Result<Vec<u8>, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name =
        device_subject(profile.serial, profile.serial, profile.manufacturer)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(SerialNumber::from_slice(cert_serial));
    params.use_authority_key_identifier_extension = true;
    Validity::forever(now).apply(&mut params)?;
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            der::OID_SUBJECT_ALT_NAME,
            der::hardware_module_name_san(profile.hw_type, profile.serial.as_bytes()),
        ));
    if let Some(url) = profile.mud_url {
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                der::OID_MUD_URL,
                der::ia5_string(url),
            ));
    }
    if let Some(url) = profile.masa_url {
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                der::OID_MASA_URL,
                der::ia5_string(url),
            ));
    }
    ca.sign(&params, subject)
}

/// The fields of an LDevID.
#[derive(Debug, Clone)]
pub struct LdevidProfile<'a> {
    /// Device serial number (subject serialNumber), as in its IDevID.
    pub serial: &'a str,
    /// Subject CN: the owner's name for the device. Serials of two manufacturers may collide,
    /// so the onboarder puts the device's full identity (maker and serial) here.
    pub common_name: &'a str,
    /// Owner organization (subject O).
    pub organization: &'a str,
    /// Where relying parties (a RADIUS server, a TLS peer) fetch the issuing CA's CRL: the
    /// certificate's CRL distribution point.
    pub crl_url: Option<&'a str>,
}

/// Issues an LDevID for the key in `subject_spki` (DER SubjectPublicKeyInfo, from a checked
/// CSR), bound to the device serial.
pub fn issue_ldevid(
    ca: &Ca,
    profile: &LdevidProfile<'_>,
    subject_spki: &[u8],
    validity: Validity,
    cert_serial: &[u8],
) -> Result<Vec<u8>, CertError> {
    let subject = rcgen::SubjectPublicKeyInfo::from_der(subject_spki)?;
    let mut params = CertificateParams::default();
    params.distinguished_name =
        device_subject(profile.serial, profile.common_name, profile.organization)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(SerialNumber::from_slice(cert_serial));
    params.use_authority_key_identifier_extension = true;
    params.crl_distribution_points = profile
        .crl_url
        .map(|url| rcgen::CrlDistributionPoint {
            uris: vec![url.to_string()],
        })
        .into_iter()
        .collect();
    validity.apply(&mut params)?;
    ca.sign(&params, &subject)
}

/// Issues the onboarder's TLS server certificate: serverAuth and id-kp-cmcRA, with the given
/// DNS names and IP addresses.
pub fn issue_registrar(
    ca: &Ca,
    organization: &str,
    names: &[String],
    subject: &impl rcgen::PublicKeyData,
    validity: Validity,
    cert_serial: &[u8],
) -> Result<Vec<u8>, CertError> {
    let mut params = server_params(organization, names, validity, cert_serial)?;
    params
        .extended_key_usages
        .push(ExtendedKeyUsagePurpose::Other(der::OID_KP_CMC_RA.to_vec()));
    ca.sign(&params, subject)
}

/// Issues a TLS server certificate (serverAuth) for another of the owner's servers, such as the
/// RADIUS server devices authenticate to with EAP-TLS: devices check it with the owner root
/// they already hold.
pub fn issue_server(
    ca: &Ca,
    organization: &str,
    names: &[String],
    subject: &impl rcgen::PublicKeyData,
    validity: Validity,
    cert_serial: &[u8],
) -> Result<Vec<u8>, CertError> {
    let params = server_params(organization, names, validity, cert_serial)?;
    ca.sign(&params, subject)
}

fn server_params(
    organization: &str,
    names: &[String],
    validity: Validity,
    cert_serial: &[u8],
) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("onboarder"),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.serial_number = Some(SerialNumber::from_slice(cert_serial));
    params.use_authority_key_identifier_extension = true;
    validity.apply(&mut params)?;
    Ok(params)
}

/// Issues the certificate of a signing key that is not a CA (the manufacturer's voucher
/// signer): digitalSignature only.
pub fn issue_signer(
    ca: &Ca,
    organization: &str,
    common_name: &str,
    subject: &impl rcgen::PublicKeyData,
    validity: Validity,
    cert_serial: &[u8],
) -> Result<Vec<u8>, CertError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(SerialNumber::from_slice(cert_serial));
    params.use_authority_key_identifier_extension = true;
    validity.apply(&mut params)?;
    ca.sign(&params, subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_restricted() {
        for ok in ["SN-0001", "a.b", "X"] {
            validate_serial(ok).unwrap();
        }
        for bad in ["", "../etc", "a/b", "-x", ".x", "a b", "é", &"x".repeat(65)] {
            assert!(validate_serial(bad).is_err(), "{bad:?}");
        }
    }
}
