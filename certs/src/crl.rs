//! Certificate revocation lists (RFC 5280 v2 CRLs), signed by the CA that issued the
//! certificates, with a CRL number that the caller keeps growing.

use std::fmt;
use std::str::FromStr;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use serde::{Deserialize, Serialize};

use crate::ca::{Ca, to_time};
use crate::error::CertError;

/// Why a certificate was revoked (RFC 5280 5.3.1), named as operators type it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// No reason given.
    Unspecified,
    /// The private key was compromised (a lost or stolen device).
    KeyCompromise,
    /// The issuing CA was compromised.
    CaCompromise,
    /// The subject's affiliation changed (for example the device was sold).
    AffiliationChanged,
    /// Replaced by a newer certificate.
    Superseded,
    /// The device is out of service.
    CessationOfOperation,
    /// The device's privileges were withdrawn.
    PrivilegeWithdrawn,
}

impl Reason {
    /// Every reason, for help texts.
    pub const ALL: [Reason; 7] = [
        Reason::Unspecified,
        Reason::KeyCompromise,
        Reason::CaCompromise,
        Reason::AffiliationChanged,
        Reason::Superseded,
        Reason::CessationOfOperation,
        Reason::PrivilegeWithdrawn,
    ];

    fn name(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "key-compromise",
            Reason::CaCompromise => "ca-compromise",
            Reason::AffiliationChanged => "affiliation-changed",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessation-of-operation",
            Reason::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    fn rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Reason::Unspecified => R::Unspecified,
            Reason::KeyCompromise => R::KeyCompromise,
            Reason::CaCompromise => R::CaCompromise,
            Reason::AffiliationChanged => R::AffiliationChanged,
            Reason::Superseded => R::Superseded,
            Reason::CessationOfOperation => R::CessationOfOperation,
            Reason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Reason::ALL.iter().map(|r| r.name()).collect();
                format!("unknown reason {s:?}; one of {}", names.join(", "))
            })
    }
}

/// One entry of a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCert {
    /// Certificate serial number (big-endian bytes).
    pub serial: Vec<u8>,
    /// When it was revoked.
    pub revoked_at: u64,
    /// Why.
    pub reason: Reason,
}

/// Builds and signs a CRL of `ca`, valid from `this_update` to `next_update`.
pub fn build(
    ca: &Ca,
    revoked: &[RevokedCert],
    crl_number: u64,
    this_update: u64,
    next_update: u64,
) -> Result<Vec<u8>, CertError> {
    let params = CertificateRevocationListParams {
        this_update: to_time(this_update)?,
        next_update: to_time(next_update)?,
        crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|r| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial),
                    revocation_time: to_time(r.revoked_at)?,
                    reason_code: Some(r.reason.rcgen()),
                    invalidity_date: None,
                })
            })
            .collect::<Result<_, CertError>>()?,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    ca.sign_crl(&params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_parse_by_name() {
        for r in Reason::ALL {
            assert_eq!(r.to_string().parse::<Reason>(), Ok(r));
        }
        assert!("stolen".parse::<Reason>().is_err());
    }
}
