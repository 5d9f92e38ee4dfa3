//! The certificates issued to a device, and where each stands.

use serde::{Deserialize, Serialize};

/// The status of a certificate issued to a device.
#[non_exhaustive]
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertStatus {
    /// Issued, not yet confirmed by the device.
    Issued,
    /// Confirmed and in use.
    Active,
    /// Replaced by a newer certificate; still accepted for the grace period (or until its
    /// expiry, whichever is first) so a device can finish switching over.
    Superseded {
        /// When the replacement was confirmed.
        at: u64,
    },
    /// Revoked.
    Revoked {
        /// RFC 5280 reason.
        #[schema(value_type = String, example = "key-compromise")]
        reason: certs::crl::Reason,
        /// When.
        at: u64,
    },
}

impl CertStatus {
    /// The status's name, without its details (for tallies and metrics).
    pub fn name(&self) -> &'static str {
        match self {
            CertStatus::Issued => "issued",
            CertStatus::Active => "active",
            CertStatus::Superseded { .. } => "superseded",
            CertStatus::Revoked { .. } => "revoked",
        }
    }
}

/// A certificate issued to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// Certificate serial number, lowercase hex.
    pub serial: String,
    /// The certificate, DER.
    #[serde(with = "serde_bytes")]
    pub der: Vec<u8>,
    /// Its raw public key.
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    /// Key identifier of the CA that issued it (for its CRL).
    #[serde(with = "serde_bytes")]
    pub issuer: Vec<u8>,
    /// When it was issued.
    pub issued_at: u64,
    /// Its notAfter.
    pub not_after: u64,
    /// Its status.
    pub status: CertStatus,
}

impl IssuedCert {
    /// Whether the certificate is one of the device's current credentials (issued or active;
    /// not revoked, not superseded).
    pub fn is_live(&self) -> bool {
        matches!(self.status, CertStatus::Issued | CertStatus::Active)
    }

    /// Whether the certificate may authenticate the device at `now`: live, or superseded less
    /// than `grace` seconds ago; and not expired.
    pub fn accepted_at(&self, now: u64, grace: u64) -> bool {
        now < self.not_after
            && match self.status {
                CertStatus::Issued | CertStatus::Active => true,
                CertStatus::Superseded { at } => now < at.saturating_add(grace),
                CertStatus::Revoked { .. } => false,
            }
    }
}
