//! The firmware repository's items: releases (a verified manifest and its image's digest) and
//! the manufacturers' firmware-signing keys they are verified with.

use serde::{Deserialize, Serialize};

/// A release as the server holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// SHA-256 of the image.
    #[serde(with = "serde_bytes")]
    pub digest: Vec<u8>,
    /// The signed manifest.
    #[serde(with = "serde_bytes")]
    pub manifest: Vec<u8>,
    /// Vendor id.
    pub vendor_id: String,
    /// Class id.
    pub class_id: String,
    /// Anti-rollback sequence number.
    pub sequence: u64,
    /// Version string.
    pub version: String,
    /// Image size.
    pub size: u64,
    /// When it was uploaded.
    pub uploaded_at: u64,
    /// Its SBOM, if the manifest names one (checked against the manifest's digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sbom: Option<super::sbom::SbomInfo>,
}

/// A manufacturer's firmware-signing key.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareKey {
    /// Vendor it signs for (the manifest's vendor id).
    pub vendor_id: String,
    /// Raw Ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// SHA-256 of the key, hex.
    pub fingerprint: String,
    /// When it was imported.
    pub added_at: u64,
}
