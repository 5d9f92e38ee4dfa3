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
    /// The age recipient the device is to encrypt its application data to and hand it back
    /// before wiping, if the owner asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_to: Option<String>,
    /// The data handed back so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<DataExport>,
}

/// Encrypted application data a device hands back, piece by piece, before its wipe. The pieces
/// are kept in the image store under their SHA-256; once all are in, the whole ciphertext is
/// stored under its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataExport {
    /// SHA-256 of the whole ciphertext, as the device announced it.
    #[serde(with = "serde_bytes")]
    pub digest: Vec<u8>,
    /// Its length.
    pub total: u64,
    /// SHA-256 of each piece received, in order.
    pub parts: Vec<serde_bytes::ByteBuf>,
    /// Bytes received.
    pub received: u64,
    /// When the last piece came and the whole was checked against `digest`.
    #[serde(default)]
    pub completed_at: Option<u64>,
}
