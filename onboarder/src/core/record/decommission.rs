//! A decommission order and, once verified, its evidence.

use protocol::attestation::WipeMethod;
use serde::{Deserialize, Serialize};

/// A decommission order and, once verified, its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decommission {
    /// The nonce the attestation must echo.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// The method asked for.
    pub method: WipeMethod,
    /// When it was ordered.
    pub requested_at: u64,
    /// The verified attestation (COSE_Sign1), once received.
    #[serde(default, with = "serde_bytes")]
    pub attestation: Option<Vec<u8>>,
    /// The certificate that signed it, DER.
    #[serde(default, with = "serde_bytes")]
    pub signer: Option<Vec<u8>>,
    /// When it was verified.
    #[serde(default)]
    pub attested_at: Option<u64>,
    /// Why it was forced without an attestation.
    #[serde(default)]
    pub forced: Option<String>,
}
