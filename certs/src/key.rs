//! Key pairs: ECDSA P-256 (the default; what secure elements hold), ECDSA P-384 and Ed25519.
//!
//! A [`KeyPair`] signs X.509 structures (through rcgen) and COSE artefacts (through
//! [`protocol::keys::Signer`]). Private keys are PKCS#8 v1 so that OpenSSL 3.0 and Python
//! cryptography can read them (ring writes Ed25519 keys as v2, which they refuse).

use protocol::keys::{Algorithm, PublicKey, Signer};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm,
};
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::error::CertError;

/// Which kind of key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyKind {
    /// ECDSA on NIST P-256.
    #[default]
    P256,
    /// ECDSA on NIST P-384.
    P384,
    /// Ed25519.
    Ed25519,
}

impl KeyKind {
    /// The kind of `key`.
    pub fn of(key: &PublicKey) -> KeyKind {
        match key {
            PublicKey::P256(_) => KeyKind::P256,
            PublicKey::P384(_) => KeyKind::P384,
            PublicKey::Ed25519(_) => KeyKind::Ed25519,
        }
    }
}

/// A private key with its public half.
pub struct KeyPair {
    kind: KeyKind,
    x509: rcgen::KeyPair,
    /// For the NIST curves: the same key producing COSE's fixed-length signatures.
    cose_ecdsa: Option<EcdsaKeyPair>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({:?}, {:?})", self.kind, self.public_key())
    }
}

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410): the 32-byte seed follows.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl KeyPair {
    /// Generates a fresh key.
    pub fn generate(kind: KeyKind) -> Result<Self, CertError> {
        let rng = SystemRandom::new();
        let pkcs8 = match kind {
            KeyKind::P256 | KeyKind::P384 => {
                let (alg, _) = ecdsa(kind);
                EcdsaKeyPair::generate_pkcs8(alg, &rng)
                    .map_err(|_| CertError::Key(format!("{kind:?} key generation failed")))?
                    .as_ref()
                    .to_vec()
            }
            KeyKind::Ed25519 => {
                let mut seed = [0u8; 32];
                rng.fill(&mut seed)
                    .map_err(|_| CertError::Key("no randomness for Ed25519 key".into()))?;
                let mut der = ED25519_PKCS8_V1_PREFIX.to_vec();
                der.extend_from_slice(&seed);
                der
            }
        };
        Self::from_pkcs8_der(&pkcs8)
    }

    /// Reads a PKCS#8 private key (DER).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CertError> {
        let pkcs8 = PrivatePkcs8KeyDer::from(der);
        for kind in [KeyKind::P256, KeyKind::P384] {
            let (cose_alg, x509_alg) = ecdsa(kind);
            if let Ok(x509) = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, x509_alg) {
                let cose = EcdsaKeyPair::from_pkcs8(cose_alg, der, &SystemRandom::new())
                    .map_err(|_| CertError::Key(format!("unreadable {kind:?} key")))?;
                return Ok(Self {
                    kind,
                    x509,
                    cose_ecdsa: Some(cose),
                });
            }
        }
        let x509 = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(|_| {
                CertError::Key("not a PKCS#8 P-256, P-384 or Ed25519 private key".into())
            })?;
        Ok(Self {
            kind: KeyKind::Ed25519,
            x509,
            cose_ecdsa: None,
        })
    }

    /// Reads a PEM `PRIVATE KEY` (PKCS#8).
    pub fn from_pem(text: &str) -> Result<Self, CertError> {
        let block = pem::parse(text).map_err(|e| CertError::Key(format!("PEM: {e}")))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(CertError::Key(format!(
                "expected a PRIVATE KEY block, found {}",
                block.tag()
            )));
        }
        Self::from_pkcs8_der(block.contents())
    }

    /// The private key as PEM `PRIVATE KEY` (PKCS#8 v1). Secret: write it with
    /// [`crate::files::write_secret`].
    pub fn to_pem(&self) -> String {
        crate::files::pem_block("PRIVATE KEY", self.pkcs8_der())
    }

    /// The private key as PKCS#8 DER. Secret.
    pub fn pkcs8_der(&self) -> &[u8] {
        self.x509.serialized_der()
    }

    /// The kind of key.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The public key in the wire form the protocol uses.
    pub fn public_key(&self) -> PublicKey {
        let raw = self.x509.public_key_raw();
        match self.kind {
            KeyKind::P256 => PublicKey::P256(raw.to_vec()),
            KeyKind::P384 => PublicKey::P384(raw.to_vec()),
            // rcgen only builds Ed25519 pairs from 32-byte public keys.
            KeyKind::Ed25519 => PublicKey::Ed25519(raw.try_into().unwrap_or([0; 32])),
        }
    }

    /// DER SubjectPublicKeyInfo of the public key.
    pub fn spki_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.x509)
    }

    /// The public key as PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> String {
        crate::files::pem_block("PUBLIC KEY", &self.spki_der())
    }
}

impl Signer for KeyPair {
    fn algorithm(&self) -> Algorithm {
        match self.kind {
            KeyKind::P256 => Algorithm::Es256,
            KeyKind::P384 => Algorithm::Es384,
            KeyKind::Ed25519 => Algorithm::EdDsa,
        }
    }

    fn public_key(&self) -> PublicKey {
        KeyPair::public_key(self)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, protocol::SignatureError> {
        match &self.cose_ecdsa {
            Some(kp) => kp
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| protocol::SignatureError::SigningFailed("ECDSA".into())),
            // Ed25519 signatures are the same in X.509 and COSE.
            None => rcgen::SigningKey::sign(&self.x509, message)
                .map_err(|e| protocol::SignatureError::SigningFailed(e.to_string())),
        }
    }
}

impl rcgen::PublicKeyData for KeyPair {
    fn der_bytes(&self) -> &[u8] {
        self.x509.der_bytes()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen::PublicKeyData::algorithm(&self.x509)
    }
}

impl rcgen::SigningKey for KeyPair {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        rcgen::SigningKey::sign(&self.x509, msg)
    }
}

/// ring's COSE-form and rcgen's X.509 signing algorithms for an ECDSA kind.
fn ecdsa(
    kind: KeyKind,
) -> (
    &'static EcdsaSigningAlgorithm,
    &'static rcgen::SignatureAlgorithm,
) {
    match kind {
        KeyKind::P384 => (
            &ECDSA_P384_SHA384_FIXED_SIGNING,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ),
        _ => (
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        ),
    }
}

/// DER SubjectPublicKeyInfo of a wire-form public key.
pub fn spki_of(key: &PublicKey) -> Vec<u8> {
    use yasna::models::ObjectIdentifier;
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_sequence(|w| match key {
                PublicKey::P256(_) => {
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(&[1, 2, 840, 10045, 2, 1]));
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(&[1, 2, 840, 10045, 3, 1, 7]));
                }
                PublicKey::P384(_) => {
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(&[1, 2, 840, 10045, 2, 1]));
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(&[1, 3, 132, 0, 34]));
                }
                PublicKey::Ed25519(_) => {
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(&[1, 3, 101, 112]));
                }
            });
            let raw = key.raw();
            w.next().write_bitvec_bytes(raw, raw.len() * 8);
        })
    })
}

/// A public key from a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
pub fn public_key_from_pem(text: &str) -> Result<PublicKey, CertError> {
    use x509_parser::prelude::FromDer;
    let block = pem::parse(text).map_err(|e| CertError::Key(format!("PEM: {e}")))?;
    if block.tag() != "PUBLIC KEY" {
        return Err(CertError::Key(format!(
            "expected a PUBLIC KEY block, found {}",
            block.tag()
        )));
    }
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(block.contents())
        .map_err(|e| CertError::Key(format!("SubjectPublicKeyInfo: {e}")))?;
    public_key_from_spki(&spki)
}

/// A public key from a DER SubjectPublicKeyInfo, as found in certificates and CSRs.
pub fn public_key_from_spki(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<PublicKey, CertError> {
    use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
    let raw = spki.subject_public_key.data.as_ref();
    let alg = &spki.algorithm;
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = alg
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CertError::Key("EC key without a named curve".into()))?;
        if curve == x509_parser::oid_registry::OID_EC_P256 {
            PublicKey::p256(raw).map_err(|e| CertError::Key(e.to_string()))
        } else if curve == x509_parser::oid_registry::OID_NIST_EC_P384 {
            PublicKey::p384(raw).map_err(|e| CertError::Key(e.to_string()))
        } else {
            Err(CertError::Key(format!(
                "EC curve {curve} is not P-256 or P-384"
            )))
        }
    } else if alg.algorithm == OID_SIG_ED25519 {
        PublicKey::ed25519(raw).map_err(|e| CertError::Key(e.to_string()))
    } else {
        Err(CertError::Key(format!(
            "key algorithm {} is not ECDSA (P-256, P-384) or Ed25519",
            alg.algorithm
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_cose_signing_for_both_kinds() {
        for kind in [KeyKind::P256, KeyKind::P384, KeyKind::Ed25519] {
            let key = KeyPair::generate(kind).unwrap();
            let again = KeyPair::from_pem(&key.to_pem()).unwrap();
            assert_eq!(again.public_key(), key.public_key());
            assert_eq!(again.kind(), kind);
            let sig = Signer::sign(&again, b"m").unwrap();
            key.public_key().verify(b"m", &sig).unwrap();
        }
    }

    #[test]
    fn public_keys_round_trip_through_spki_pem() {
        for kind in [KeyKind::P256, KeyKind::P384, KeyKind::Ed25519] {
            let key = KeyPair::generate(kind).unwrap();
            assert_eq!(spki_of(&key.public_key()), key.spki_der());
            assert_eq!(
                public_key_from_pem(&key.public_pem()).unwrap(),
                key.public_key()
            );
        }
    }

    #[test]
    fn ed25519_keys_are_pkcs8_v1() {
        let key = KeyPair::generate(KeyKind::Ed25519).unwrap();
        assert_eq!(key.pkcs8_der().len(), 48);
        assert_eq!(&key.pkcs8_der()[..16], &ED25519_PKCS8_V1_PREFIX);
    }

    #[test]
    fn garbage_is_a_clear_error_without_key_bytes() {
        let err =
            KeyPair::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .unwrap_err();
        assert!(err.to_string().contains("not a PKCS#8"));
        assert!(
            KeyPair::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
