//! A device key as a handle: what the agent needs a key to do, so that the key itself can live
//! in a secure element. Adapters let rcgen (CSRs) and rustls (TLS client auth) use any handle.

use std::sync::Arc;

use protocol::SignatureError;
use protocol::keys::{Algorithm, PublicKey, Signer};
use rustls::SignatureScheme;

/// A private key the agent can sign with but never reads.
pub trait DeviceKey: Signer + std::fmt::Debug {
    /// Signs as X.509 and TLS expect: ECDSA signatures in ASN.1 DER, Ed25519 raw. (COSE's
    /// fixed-length form is [`Signer::sign`].)
    fn sign_x509(&self, message: &[u8]) -> Result<Vec<u8>, SignatureError>;
}

impl DeviceKey for certs::KeyPair {
    fn sign_x509(&self, message: &[u8]) -> Result<Vec<u8>, SignatureError> {
        rcgen::SigningKey::sign(self, message)
            .map_err(|e| SignatureError::SigningFailed(e.to_string()))
    }
}

/// rcgen's view of a device key, for building CSRs.
pub struct CsrSigner<'a> {
    key: &'a dyn DeviceKey,
    raw: Vec<u8>,
}

impl<'a> CsrSigner<'a> {
    /// Wraps `key`.
    pub fn new(key: &'a dyn DeviceKey) -> Self {
        CsrSigner {
            raw: key.public_key().raw().to_vec(),
            key,
        }
    }
}

impl rcgen::PublicKeyData for CsrSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.key.algorithm() {
            Algorithm::EdDsa => &rcgen::PKCS_ED25519,
            _ => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

impl rcgen::SigningKey for CsrSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key
            .sign_x509(msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// rustls's view of a device key, for TLS client authentication.
#[derive(Debug, Clone)]
pub struct TlsKey(pub Arc<dyn DeviceKey>);

impl TlsKey {
    fn scheme(&self) -> SignatureScheme {
        match self.0.algorithm() {
            Algorithm::EdDsa => SignatureScheme::ED25519,
            _ => SignatureScheme::ECDSA_NISTP256_SHA256,
        }
    }
}

impl rustls::sign::SigningKey for TlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&self.scheme())
            .then(|| Box::new(self.clone()) as Box<dyn rustls::sign::Signer>)
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        match self.0.public_key() {
            PublicKey::Ed25519(_) => rustls::SignatureAlgorithm::ED25519,
            PublicKey::P256(_) => rustls::SignatureAlgorithm::ECDSA,
        }
    }
}

impl rustls::sign::Signer for TlsKey {
    /// rustls signs inside the connection's task; a secure element may take a few hundred
    /// milliseconds, so on a multi-threaded runtime the worker hands its other tasks over first.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let sign = || {
            self.0
                .sign_x509(message)
                .map_err(|e| rustls::Error::General(e.to_string()))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(sign)
            }
            _ => sign(),
        }
    }

    fn scheme(&self) -> SignatureScheme {
        TlsKey::scheme(self)
    }
}
