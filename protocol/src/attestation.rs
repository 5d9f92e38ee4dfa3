//! The wipe attestation: the device's signed account of how it erased itself (NIST SP 800-88),
//! bound to the server's nonce so it cannot be replayed, signed with the device's LDevID key
//! as COSE_Sign1 before that key is destroyed.

use serde::{Deserialize, Serialize};

use crate::cose::{self, Signed};
use crate::error::{DecodeError, SignatureError};
use crate::keys::{PublicKey, Signer};

/// Content type of a wipe attestation's payload.
pub const ATTESTATION_CONTENT_TYPE: &str = "application/vnd.onboarder.wipe-attestation+cbor";
/// Largest signed attestation accepted.
pub const MAX_ATTESTATION: usize = 32 * 1024;
/// Length of the server's decommission nonce.
pub const NONCE_LEN: usize = 32;

/// How to sanitize (NIST SP 800-88 categories).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WipeMethod {
    /// Clear: overwrite user-addressable storage, verified by reading back.
    Clear,
    /// Purge by cryptographic erase: destroy the key that encrypts the data (plus Clear of
    /// what is not encrypted).
    PurgeCryptographicErase,
}

impl std::fmt::Display for WipeMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WipeMethod::Clear => "Clear",
            WipeMethod::PurgeCryptographicErase => "Purge (cryptographic erase)",
        })
    }
}

/// One thing that was wiped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipedTarget {
    /// What (for example `application-data`, `data-encryption-key`, `network-credentials`).
    pub target: String,
    /// How many bytes it held.
    pub bytes: u64,
    /// The method applied to it.
    pub method: WipeMethod,
    /// How it was verified (for example `read-back` or `key-destroyed`).
    pub verification: String,
    /// Whether the verification passed.
    pub verified: bool,
}

/// The device's account of its sanitization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipeAttestation {
    /// Device serial.
    #[serde(rename = "serial-number")]
    pub serial: String,
    /// Manufacturer (vendor id).
    pub manufacturer: String,
    /// Model (class id).
    pub model: String,
    /// Firmware version running at the time.
    #[serde(rename = "firmware-version")]
    pub firmware_version: String,
    /// Version of the agent that wiped.
    #[serde(rename = "agent-version")]
    pub agent_version: String,
    /// The server's nonce from the decommission command.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// The method asked for.
    pub method: WipeMethod,
    /// What was wiped.
    pub targets: Vec<WipedTarget>,
    /// When the wipe started.
    #[serde(rename = "started-on")]
    pub started_on: u64,
    /// When it ended.
    #[serde(rename = "finished-on")]
    pub finished_on: u64,
    /// The application data handed to the owner before the wipe, if the order asked for it.
    #[serde(
        rename = "exported-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub exported: Option<ExportedData>,
}

/// Application data the device handed to its owner before wiping it: encrypted to a key only
/// the owner holds, then sent to the onboarder, which keeps the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedData {
    /// To whom it was encrypted (an age X25519 recipient, `age1...`).
    pub recipient: String,
    /// SHA-256 of the ciphertext.
    #[serde(with = "serde_bytes")]
    pub sha256: Vec<u8>,
    /// Its length in bytes.
    pub bytes: u64,
}

impl WipeAttestation {
    /// Signs the attestation with the device's LDevID key.
    pub fn sign(&self, signer: &dyn Signer) -> Result<Vec<u8>, SignatureError> {
        cose::sign(crate::cbor::to_vec(self), ATTESTATION_CONTENT_TYPE, signer)
    }

    /// Verifies a signed attestation with the device's LDevID public key and decodes it.
    pub fn open(bytes: &[u8], key: &PublicKey) -> Result<WipeAttestation, AttestationError> {
        let signed = Signed::parse(bytes, MAX_ATTESTATION, ATTESTATION_CONTENT_TYPE)?;
        let payload = signed.verify(key)?;
        Ok(crate::cbor::from_slice(payload, MAX_ATTESTATION)?)
    }

    /// Decodes a signed attestation without checking the signature (for displaying one that
    /// was verified when it was received).
    pub fn parse_unverified(bytes: &[u8]) -> Result<WipeAttestation, DecodeError> {
        let signed = Signed::parse(bytes, MAX_ATTESTATION, ATTESTATION_CONTENT_TYPE)?;
        crate::cbor::from_slice(signed.payload_unverified(), MAX_ATTESTATION)
    }

    /// Whether every target was verified.
    pub fn all_verified(&self) -> bool {
        !self.targets.is_empty() && self.targets.iter().all(|t| t.verified)
    }
}

/// Why an attestation could not be read.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AttestationError {
    /// Not decodable.
    #[error("attestation: {0}")]
    Decode(#[from] DecodeError),
    /// Not signed by the key on record.
    #[error("attestation signature: {0}")]
    Signature(#[from] SignatureError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::test_signers::P256;

    fn attestation() -> WipeAttestation {
        WipeAttestation {
            serial: "SN-1".into(),
            manufacturer: "Acme".into(),
            model: "sensor-1".into(),
            firmware_version: "1.0.0".into(),
            agent_version: "0.1.0".into(),
            nonce: vec![7; NONCE_LEN],
            method: WipeMethod::PurgeCryptographicErase,
            targets: vec![WipedTarget {
                target: "application-data".into(),
                bytes: 10,
                method: WipeMethod::Clear,
                verification: "read-back".into(),
                verified: true,
            }],
            started_on: 1,
            finished_on: 2,
            exported: None,
        }
    }

    #[test]
    fn signs_and_verifies_and_refuses_tampering() {
        let key = P256::generate();
        let signed = attestation().sign(&key).unwrap();
        assert_eq!(
            WipeAttestation::open(&signed, &key.public_key()).unwrap(),
            attestation()
        );
        assert!(matches!(
            WipeAttestation::open(&signed, &P256::generate().public_key()),
            Err(AttestationError::Signature(SignatureError::Invalid))
        ));
        let at = signed.windows(4).position(|w| w == b"SN-1").unwrap();
        let mut tampered = signed.clone();
        tampered[at + 3] = b'2';
        assert!(WipeAttestation::open(&tampered, &key.public_key()).is_err());
        assert!(attestation().all_verified());
    }
}
