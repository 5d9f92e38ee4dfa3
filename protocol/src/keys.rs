//! Public keys, signature algorithms and the [`Signer`] trait.
//!
//! Private keys never appear in this crate: whoever owns a key (a file, a secure element, a
//! TPM) implements [`Signer`], and the artefacts here call it. Verification needs only the raw
//! public key, so an independent implementation can check every artefact.

use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::error::SignatureError;

/// The signature algorithms we sign and accept, named as in COSE.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256; signatures are the 64-byte `r || s` of RFC 9053.
    Es256,
    /// ECDSA on P-384 with SHA-384; signatures are the 96-byte `r || s`.
    Es384,
    /// Ed25519 (COSE "EdDSA").
    EdDsa,
}

impl Algorithm {
    /// The COSE algorithm identifier.
    pub fn cose(self) -> coset::iana::Algorithm {
        match self {
            Algorithm::Es256 => coset::iana::Algorithm::ES256,
            Algorithm::Es384 => coset::iana::Algorithm::ES384,
            Algorithm::EdDsa => coset::iana::Algorithm::EdDSA,
        }
    }
}

/// A public key in its raw form: the SEC1 uncompressed point for the NIST curves, 32 bytes
/// for Ed25519.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum PublicKey {
    /// ECDSA P-256, 65-byte uncompressed SEC1 point.
    P256(Vec<u8>),
    /// ECDSA P-384, 97-byte uncompressed SEC1 point.
    P384(Vec<u8>),
    /// Ed25519, 32 bytes.
    Ed25519([u8; 32]),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, raw) = match self {
            PublicKey::P256(raw) => ("P256", raw.as_slice()),
            PublicKey::P384(raw) => ("P384", raw.as_slice()),
            PublicKey::Ed25519(raw) => ("Ed25519", raw.as_slice()),
        };
        write!(f, "{kind}(")?;
        for b in raw.iter().take(8) {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

impl PublicKey {
    /// A P-256 key from its uncompressed SEC1 encoding.
    pub fn p256(sec1: &[u8]) -> Result<Self, SignatureError> {
        if sec1.len() != 65 || sec1[0] != 0x04 {
            return Err(SignatureError::MalformedKey(
                "P-256 key must be a 65-byte uncompressed point",
            ));
        }
        Ok(PublicKey::P256(sec1.to_vec()))
    }

    /// A P-384 key from its uncompressed SEC1 encoding.
    pub fn p384(sec1: &[u8]) -> Result<Self, SignatureError> {
        if sec1.len() != 97 || sec1[0] != 0x04 {
            return Err(SignatureError::MalformedKey(
                "P-384 key must be a 97-byte uncompressed point",
            ));
        }
        Ok(PublicKey::P384(sec1.to_vec()))
    }

    /// An Ed25519 key from its 32 raw bytes.
    pub fn ed25519(raw: &[u8]) -> Result<Self, SignatureError> {
        let raw: [u8; 32] = raw
            .try_into()
            .map_err(|_| SignatureError::MalformedKey("Ed25519 key must be 32 bytes"))?;
        Ok(PublicKey::Ed25519(raw))
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PublicKey::P256(_) => Algorithm::Es256,
            PublicKey::P384(_) => Algorithm::Es384,
            PublicKey::Ed25519(_) => Algorithm::EdDsa,
        }
    }

    /// The raw key bytes.
    pub fn raw(&self) -> &[u8] {
        match self {
            PublicKey::P256(raw) | PublicKey::P384(raw) => raw,
            PublicKey::Ed25519(raw) => raw,
        }
    }

    /// Verifies `signature` over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        match self {
            PublicKey::P256(raw) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, raw)
                .verify(message, signature)
                .map_err(|_| SignatureError::Invalid),
            PublicKey::P384(raw) => UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, raw)
                .verify(message, signature)
                .map_err(|_| SignatureError::Invalid),
            PublicKey::Ed25519(raw) => {
                let key = ed25519_dalek::VerifyingKey::from_bytes(raw)
                    .map_err(|_| SignatureError::MalformedKey("not an Ed25519 point"))?;
                let sig = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| SignatureError::Invalid)?;
                key.verify_strict(message, &sig)
                    .map_err(|_| SignatureError::Invalid)
            }
        }
    }
}

/// Something that holds a private key and signs with it.
///
/// ECDSA signers return the fixed-length `r || s` form that COSE uses (64 bytes for ES256, 96
/// for ES384).
pub trait Signer: Send + Sync {
    /// The algorithm of this key.
    fn algorithm(&self) -> Algorithm;
    /// The public half of the key.
    fn public_key(&self) -> PublicKey;
    /// Signs `message`.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignatureError>;
}

#[cfg(test)]
pub(crate) mod test_signers {
    //! Software signers for this crate's own tests (real keys live in `certs`).
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    };

    /// An ECDSA key on P-256 or P-384.
    pub(crate) struct Ecdsa(EcdsaKeyPair, Algorithm);

    /// P-256, the common case.
    pub(crate) struct P256;

    impl P256 {
        pub(crate) fn generate() -> Ecdsa {
            Ecdsa::generate(Algorithm::Es256)
        }
    }

    impl Ecdsa {
        pub(crate) fn generate(algorithm: Algorithm) -> Self {
            let alg = match algorithm {
                Algorithm::Es384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
                _ => &ECDSA_P256_SHA256_FIXED_SIGNING,
            };
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            Self(
                EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap(),
                algorithm,
            )
        }
    }

    impl Signer for Ecdsa {
        fn algorithm(&self) -> Algorithm {
            self.1
        }
        fn public_key(&self) -> PublicKey {
            let raw = self.0.public_key().as_ref();
            match self.1 {
                Algorithm::Es384 => PublicKey::p384(raw).unwrap(),
                _ => PublicKey::p256(raw).unwrap(),
            }
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignatureError> {
            Ok(self
                .0
                .sign(&SystemRandom::new(), message)
                .unwrap()
                .as_ref()
                .to_vec())
        }
    }

    pub(crate) struct Ed(ed25519_dalek::SigningKey);

    impl Ed {
        pub(crate) fn from_seed(seed: u8) -> Self {
            Self(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
        }
    }

    impl Signer for Ed {
        fn algorithm(&self) -> Algorithm {
            Algorithm::EdDsa
        }
        fn public_key(&self) -> PublicKey {
            PublicKey::Ed25519(self.0.verifying_key().to_bytes())
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignatureError> {
            use ed25519_dalek::Signer as _;
            Ok(self.0.sign(message).to_bytes().to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_signers::{Ecdsa, Ed, P256};
    use super::*;

    #[test]
    fn every_algorithm_signs_and_verifies() {
        for signer in [
            Box::new(P256::generate()) as Box<dyn Signer>,
            Box::new(Ecdsa::generate(Algorithm::Es384)),
            Box::new(Ed::from_seed(1)),
        ] {
            let sig = signer.sign(b"msg").unwrap();
            signer.public_key().verify(b"msg", &sig).unwrap();
            assert_eq!(
                signer.public_key().verify(b"msh", &sig),
                Err(SignatureError::Invalid)
            );
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(PublicKey::p256(&[4u8; 64]).is_err());
        assert!(PublicKey::p256(&[2u8; 65]).is_err());
        assert!(PublicKey::p384(&[4u8; 65]).is_err());
        assert!(PublicKey::ed25519(&[0u8; 31]).is_err());
    }
}
