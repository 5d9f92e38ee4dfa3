//! Public keys, signature algorithms and the [`Signer`] trait.
//!
//! Private keys never appear in this crate: whoever owns a key (a file, a secure element, a
//! TPM) implements [`Signer`], and the artefacts here call it. Verification needs only the raw
//! public key, so an independent implementation can check every artefact.

use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::error::SignatureError;

/// The signature algorithms we sign and accept, named as in COSE.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256; signatures are the 64-byte `r || s` of RFC 9053.
    Es256,
    /// Ed25519 (COSE "EdDSA").
    EdDsa,
}

impl Algorithm {
    /// The COSE algorithm identifier.
    pub fn cose(self) -> coset::iana::Algorithm {
        match self {
            Algorithm::Es256 => coset::iana::Algorithm::ES256,
            Algorithm::EdDsa => coset::iana::Algorithm::EdDSA,
        }
    }
}

/// A public key in its raw form: the SEC1 uncompressed point for P-256, 32 bytes for Ed25519.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum PublicKey {
    /// ECDSA P-256, 65-byte uncompressed SEC1 point.
    P256(Vec<u8>),
    /// Ed25519, 32 bytes.
    Ed25519([u8; 32]),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, raw) = match self {
            PublicKey::P256(raw) => ("P256", raw.as_slice()),
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
            PublicKey::Ed25519(_) => Algorithm::EdDsa,
        }
    }

    /// The raw key bytes.
    pub fn raw(&self) -> &[u8] {
        match self {
            PublicKey::P256(raw) => raw,
            PublicKey::Ed25519(raw) => raw,
        }
    }

    /// Verifies `signature` over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        match self {
            PublicKey::P256(raw) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, raw)
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
/// ES256 signers return the 64-byte fixed-length `r || s` form that COSE uses.
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
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    pub(crate) struct P256(EcdsaKeyPair);

    impl P256 {
        pub(crate) fn generate() -> Self {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            Self(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap(),
            )
        }
    }

    impl Signer for P256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::Es256
        }
        fn public_key(&self) -> PublicKey {
            PublicKey::p256(self.0.public_key().as_ref()).unwrap()
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
    use super::test_signers::{Ed, P256};
    use super::*;

    #[test]
    fn both_algorithms_sign_and_verify() {
        for signer in [
            Box::new(P256::generate()) as Box<dyn Signer>,
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
        assert!(PublicKey::ed25519(&[0u8; 31]).is_err());
    }
}
