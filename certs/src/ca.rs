//! Certificate authorities: roots, intermediates, and issuing with them.
//!
//! The CA sets everything a subject may not choose (CA flag, key usage, EKU, validity, a random
//! serial number); profiles in [`crate::profile`] say what goes into each kind of certificate.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose,
    SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use crate::error::CertError;
use crate::inspect::CertInfo;
use crate::key::KeyPair;

/// Seconds since the Unix epoch of 9999-12-31T23:59:59Z, the "no well-defined expiration"
/// notAfter of RFC 5280 4.1.2.5 that 802.1AR IDevIDs use.
pub const NO_EXPIRY: u64 = 253_402_300_799;

/// Certificates are back-dated by this much, so that a peer whose clock lags a little still
/// accepts a certificate issued a moment ago.
pub const BACKDATE: u64 = 300;

/// A validity period in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First second of validity.
    pub not_before: u64,
    /// Last second of validity.
    pub not_after: u64,
}

impl Validity {
    /// From `now` (back-dated by [`BACKDATE`]) for `seconds`.
    pub fn starting(now: u64, seconds: u64) -> Self {
        Validity {
            not_before: now.saturating_sub(BACKDATE),
            not_after: now.saturating_add(seconds),
        }
    }

    /// From `now` (back-dated) with no well-defined expiration.
    pub fn forever(now: u64) -> Self {
        Validity {
            not_before: now.saturating_sub(BACKDATE),
            not_after: NO_EXPIRY,
        }
    }

    pub(crate) fn apply(&self, params: &mut CertificateParams) -> Result<(), CertError> {
        params.not_before = to_time(self.not_before)?;
        params.not_after = to_time(self.not_after)?;
        Ok(())
    }
}

pub(crate) fn to_time(secs: u64) -> Result<OffsetDateTime, CertError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| CertError::Generate(format!("time {secs} out of range")))
}

/// A fresh random positive 128-bit certificate serial number. Random, not derived from the key,
/// so a re-issue to the same key never repeats a serial.
pub fn random_serial() -> Result<[u8; 16], CertError> {
    let mut serial = [0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| CertError::Generate("no randomness for a serial number".into()))?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    Ok(serial)
}

/// Subject name of a CA.
#[derive(Debug, Clone)]
pub struct CaName {
    /// Organization (O).
    pub organization: String,
    /// Common name (CN).
    pub common_name: String,
}

impl CaName {
    pub(crate) fn to_dn(&self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, self.organization.as_str());
        dn.push(DnType::CommonName, self.common_name.as_str());
        dn
    }
}

/// A certificate authority: its certificate and its signing key.
pub struct Ca {
    cert: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_len", &self.cert.len())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A self-signed root CA.
    pub fn root(
        name: &CaName,
        key: KeyPair,
        validity: Validity,
        serial: &[u8],
    ) -> Result<Ca, CertError> {
        let params = ca_params(name, validity, serial, None)?;
        let cert = params.self_signed(&key)?;
        Ca::from_parts(cert.der().to_vec(), key)
    }

    /// An intermediate CA under this one, allowed to issue end-entity certificates only.
    pub fn intermediate(
        &self,
        name: &CaName,
        key: KeyPair,
        validity: Validity,
        serial: &[u8],
    ) -> Result<Ca, CertError> {
        let mut params = ca_params(name, validity, serial, Some(0))?;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ca::from_parts(cert.der().to_vec(), key)
    }

    /// A cross-certificate (the root key update of RFC 4210 5.3.13 that RFC 7030 4.1.3
    /// distributes): `subject`'s name and key, signed by this CA. With the new root as
    /// `subject` it is NewWithOld, by which a peer that trusts only this (old) root reaches
    /// certificates under the new one; with the roles swapped, OldWithNew.
    pub fn cross_certify(
        &self,
        subject: &Ca,
        validity: Validity,
        serial: &[u8],
    ) -> Result<Vec<u8>, CertError> {
        let info = CertInfo::parse(subject.cert_der())?;
        let (Some(organization), Some(common_name)) = (info.organization, info.common_name) else {
            return Err(CertError::Profile(
                "a CA to cross-certify needs an organization and a common name".into(),
            ));
        };
        let name = CaName {
            organization,
            common_name,
        };
        let mut params = ca_params(&name, validity, serial, None)?;
        params.use_authority_key_identifier_extension = true;
        if let Some(id) = info.subject_key_id {
            params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(id);
        }
        self.sign(&params, subject.key())
    }

    /// A CA from its certificate and key, as loaded from disk. Refuses a key that is not the
    /// certificate's, or a certificate that is not a CA.
    pub fn from_parts(cert: Vec<u8>, key: KeyPair) -> Result<Ca, CertError> {
        let info = CertInfo::parse(&cert)?;
        if info.public_key != key.public_key() {
            return Err(CertError::Key(
                "the private key does not belong to the CA certificate".into(),
            ));
        }
        if !info.is_ca {
            return Err(CertError::Profile("certificate is not a CA".into()));
        }
        let issuer = Issuer::from_ca_cert_der(&cert.as_slice().into(), key)?;
        Ok(Ca { cert, issuer })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert
    }

    /// The CA's key.
    pub fn key(&self) -> &KeyPair {
        self.issuer.key()
    }

    /// Signs a CRL.
    pub(crate) fn sign_crl(
        &self,
        params: &rcgen::CertificateRevocationListParams,
    ) -> Result<Vec<u8>, CertError> {
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }

    /// Signs `params` for `subject`.
    pub fn sign(
        &self,
        params: &CertificateParams,
        subject: &impl rcgen::PublicKeyData,
    ) -> Result<Vec<u8>, CertError> {
        Ok(params.signed_by(subject, &self.issuer)?.der().to_vec())
    }
}

fn ca_params(
    name: &CaName,
    validity: Validity,
    serial: &[u8],
    path_len: Option<u8>,
) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name.to_dn();
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from_slice(serial));
    validity.apply(&mut params)?;
    Ok(params)
}
