//! The firmware manifest: what the manufacturer signs about an image, after the SUIT
//! information model (RFC 9124) and its threat list (RFC 9019).
//!
//! A CBOR map with text keys, signed with the manufacturer's Ed25519 firmware key as COSE_Sign1,
//! so any COSE library can verify it with the public key alone. A device accepts an image only if
//! the signature is its manufacturer's, the vendor and class are its own, the sequence number is
//! higher than any it accepted before (anti-rollback, distinct from the human version string),
//! the manifest has not expired, and the image has exactly the announced size and SHA-256
//! digest.

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cose::{self, Signed};
use crate::error::{DecodeError, SignatureError};
use crate::keys::{PublicKey, Signer};

/// Content type of a manifest's payload.
pub const MANIFEST_CONTENT_TYPE: &str = "application/vnd.onboarder.firmware-manifest+cbor";
/// Largest signed manifest accepted.
pub const MAX_MANIFEST: usize = 16 * 1024;

/// A software bill of materials shipped with a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SbomRef {
    /// `cyclonedx` or `spdx`.
    pub format: String,
    /// Where it can be fetched.
    pub uri: String,
    /// SHA-256 of the document.
    #[serde(with = "serde_bytes")]
    pub digest: Vec<u8>,
}

/// The signed statement about one firmware image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Vendor identifier (the manufacturer).
    #[serde(rename = "vendor-id")]
    pub vendor_id: String,
    /// Device class identifier (the model the image is for).
    #[serde(rename = "class-id")]
    pub class_id: String,
    /// Monotonic sequence number: a device never accepts one that is not higher than what it
    /// accepted before.
    #[serde(rename = "sequence-number")]
    pub sequence: u64,
    /// Human-readable version string.
    pub version: String,
    /// Image size in bytes.
    #[serde(rename = "image-size")]
    pub size: u64,
    /// SHA-256 of the image.
    #[serde(rename = "image-digest", with = "serde_bytes")]
    pub digest: Vec<u8>,
    /// When the manifest was made.
    #[serde(rename = "created-on")]
    pub created_on: u64,
    /// After this time the image must not be installed.
    #[serde(
        rename = "expires-on",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_on: Option<u64>,
    /// The release's SBOM, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sbom: Option<SbomRef>,
    /// When the manufacturer's security updates for the class end (seconds since the epoch),
    /// if it says: its signed word, which the owner may override.
    #[serde(
        rename = "support-ends-on",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub support_ends_on: Option<u64>,
}

/// What a device knows about itself, against which a manifest is checked.
#[derive(Debug, Clone, Copy)]
pub struct ManifestExpectation<'a> {
    /// The device's vendor.
    pub vendor_id: &'a str,
    /// The device's class.
    pub class_id: &'a str,
    /// The highest sequence number the device accepted so far.
    pub installed_sequence: u64,
}

/// Why a manifest or an image was refused.
#[non_exhaustive]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ManifestError {
    /// The manifest could not be decoded.
    #[error("manifest: {0}")]
    Decode(#[from] DecodeError),
    /// The signature is not the manufacturer's.
    #[error("manifest signature: {0}")]
    Signature(#[from] SignatureError),
    /// The manifest is for another vendor.
    #[error("manifest is for vendor {found:?}, not {expected:?}")]
    WrongVendor {
        /// This device's vendor.
        expected: String,
        /// The manifest's vendor.
        found: String,
    },
    /// The manifest is for another class of device.
    #[error("manifest is for class {found:?}, not {expected:?}")]
    WrongClass {
        /// This device's class.
        expected: String,
        /// The manifest's class.
        found: String,
    },
    /// The sequence number is not higher than what the device accepted before.
    #[error(
        "sequence number {offered} is not higher than the installed {installed} (rollback or replay)"
    )]
    Rollback {
        /// Sequence number in the manifest.
        offered: u64,
        /// Highest accepted so far.
        installed: u64,
    },
    /// The manifest has expired.
    #[error("manifest expired at {expires_on} (now {now})")]
    Expired {
        /// Expiry.
        expires_on: u64,
        /// Current time.
        now: u64,
    },
    /// The image is not of the announced size.
    #[error("image is {actual} bytes, the manifest says {expected}")]
    WrongSize {
        /// Size in the manifest.
        expected: u64,
        /// Size of the image.
        actual: u64,
    },
    /// The image's digest is not the announced one.
    #[error("image digest does not match the manifest")]
    WrongDigest,
}

/// Why a device refused an update, as a code the onboarder can count and act on (the report's
/// text gives the details).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirmwareRefusal {
    /// The manifest could not be decoded.
    Malformed,
    /// The signature is not the manufacturer's (forged or tampered).
    Signature,
    /// For another vendor.
    WrongVendor,
    /// For another class of device.
    WrongClass,
    /// Not newer than what the device runs (rollback or replay).
    Rollback,
    /// The manifest has expired.
    Expired,
    /// The image is not of the announced size.
    WrongSize,
    /// The image is not the announced one.
    WrongDigest,
    /// A refusal this version does not know (sent by a newer agent).
    #[serde(other)]
    Unknown,
}

impl ManifestError {
    /// The refusal's code.
    pub fn refusal(&self) -> FirmwareRefusal {
        match self {
            ManifestError::Decode(_) => FirmwareRefusal::Malformed,
            ManifestError::Signature(_) => FirmwareRefusal::Signature,
            ManifestError::WrongVendor { .. } => FirmwareRefusal::WrongVendor,
            ManifestError::WrongClass { .. } => FirmwareRefusal::WrongClass,
            ManifestError::Rollback { .. } => FirmwareRefusal::Rollback,
            ManifestError::Expired { .. } => FirmwareRefusal::Expired,
            ManifestError::WrongSize { .. } => FirmwareRefusal::WrongSize,
            ManifestError::WrongDigest => FirmwareRefusal::WrongDigest,
        }
    }
}

impl Manifest {
    /// A manifest for `image`, with its size and SHA-256.
    pub fn for_image(image: &[u8]) -> ManifestBuilder {
        ManifestBuilder {
            size: image.len() as u64,
            digest: sha256(image).to_vec(),
        }
    }

    /// Signs the manifest with the manufacturer's firmware key.
    pub fn sign(&self, signer: &dyn Signer) -> Result<Vec<u8>, SignatureError> {
        cose::sign(crate::cbor::to_vec(self), MANIFEST_CONTENT_TYPE, signer)
    }

    /// Decodes a signed manifest without checking its signature, for routing only.
    pub fn parse_unverified(bytes: &[u8]) -> Result<Manifest, DecodeError> {
        let signed = Signed::parse(bytes, MAX_MANIFEST, MANIFEST_CONTENT_TYPE)?;
        crate::cbor::from_slice(signed.payload_unverified(), MAX_MANIFEST)
    }

    /// Verifies a signed manifest with the firmware key and decodes it.
    pub fn open(bytes: &[u8], firmware_key: &PublicKey) -> Result<Manifest, ManifestError> {
        let signed = Signed::parse(bytes, MAX_MANIFEST, MANIFEST_CONTENT_TYPE)?;
        let payload = signed.verify(firmware_key)?;
        let manifest: Manifest = crate::cbor::from_slice(payload, MAX_MANIFEST)?;
        if manifest.digest.len() != 32 {
            return Err(ManifestError::Decode(DecodeError::Malformed(
                "image-digest must be a SHA-256".into(),
            )));
        }
        Ok(manifest)
    }

    /// The device's checks before it downloads anything: its vendor and class, a sequence
    /// number above the installed one, not expired.
    pub fn check(&self, expect: &ManifestExpectation<'_>, now: u64) -> Result<(), ManifestError> {
        if self.vendor_id != expect.vendor_id {
            return Err(ManifestError::WrongVendor {
                expected: expect.vendor_id.to_string(),
                found: self.vendor_id.clone(),
            });
        }
        if self.class_id != expect.class_id {
            return Err(ManifestError::WrongClass {
                expected: expect.class_id.to_string(),
                found: self.class_id.clone(),
            });
        }
        if self.sequence <= expect.installed_sequence {
            return Err(ManifestError::Rollback {
                offered: self.sequence,
                installed: expect.installed_sequence,
            });
        }
        if let Some(expires_on) = self.expires_on
            && expires_on <= now
        {
            return Err(ManifestError::Expired { expires_on, now });
        }
        Ok(())
    }

    /// Checks an image's size and SHA-256 against the manifest.
    pub fn check_image(&self, size: u64, digest: &[u8]) -> Result<(), ManifestError> {
        if size != self.size {
            return Err(ManifestError::WrongSize {
                expected: self.size,
                actual: size,
            });
        }
        if digest != self.digest.as_slice() {
            return Err(ManifestError::WrongDigest);
        }
        Ok(())
    }
}

/// Builds a [`Manifest`] around an image's size and digest.
#[derive(Debug, Clone)]
pub struct ManifestBuilder {
    size: u64,
    digest: Vec<u8>,
}

impl ManifestBuilder {
    /// The manifest, with the remaining fields.
    pub fn build(
        self,
        vendor_id: &str,
        class_id: &str,
        sequence: u64,
        version: &str,
        created_on: u64,
    ) -> Manifest {
        Manifest {
            vendor_id: vendor_id.to_string(),
            class_id: class_id.to_string(),
            sequence,
            version: version.to_string(),
            size: self.size,
            digest: self.digest,
            created_on,
            expires_on: None,
            sbom: None,
            support_ends_on: None,
        }
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::test_signers::{Ed, P256};

    fn manifest(image: &[u8]) -> Manifest {
        Manifest::for_image(image).build("acme", "sensor-1", 5, "1.5.0", 100)
    }

    fn expect(installed: u64) -> ManifestExpectation<'static> {
        ManifestExpectation {
            vendor_id: "acme",
            class_id: "sensor-1",
            installed_sequence: installed,
        }
    }

    #[test]
    fn signs_verifies_and_checks() {
        let key = Ed::from_seed(9);
        let image = b"firmware image".to_vec();
        let signed = manifest(&image).sign(&key).unwrap();
        let m = Manifest::open(&signed, &key.public_key()).unwrap();
        assert_eq!(m, manifest(&image));
        m.check(&expect(4), 200).unwrap();
        m.check_image(image.len() as u64, &sha256(&image)).unwrap();
    }

    #[test]
    fn refusals() {
        let key = Ed::from_seed(9);
        let image = b"firmware image".to_vec();
        let signed = manifest(&image).sign(&key).unwrap();
        assert!(matches!(
            Manifest::open(&signed, &Ed::from_seed(10).public_key()),
            Err(ManifestError::Signature(SignatureError::Invalid))
        ));
        assert!(matches!(
            Manifest::open(&signed, &P256::generate().public_key()),
            Err(ManifestError::Signature(SignatureError::AlgorithmMismatch(
                _
            )))
        ));
        let m = manifest(&image);
        assert_eq!(
            m.check(&expect(5), 200),
            Err(ManifestError::Rollback {
                offered: 5,
                installed: 5
            })
        );
        assert!(matches!(
            m.check(
                &ManifestExpectation {
                    class_id: "gateway",
                    ..expect(0)
                },
                200
            ),
            Err(ManifestError::WrongClass { .. })
        ));
        let expiring = Manifest {
            expires_on: Some(150),
            ..m.clone()
        };
        assert!(matches!(
            expiring.check(&expect(0), 150),
            Err(ManifestError::Expired { .. })
        ));
        let mut flipped = image.clone();
        flipped[0] ^= 1;
        assert_eq!(
            m.check_image(flipped.len() as u64, &sha256(&flipped)),
            Err(ManifestError::WrongDigest)
        );
        assert!(matches!(
            m.check_image(image.len() as u64 - 1, &sha256(&image[1..])),
            Err(ManifestError::WrongSize { .. })
        ));
    }
}
