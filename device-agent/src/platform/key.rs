//! A device key as a handle: what the agent needs a key to do, so that the key itself can live
//! in a secure element. Adapters let rcgen (CSRs) and rustls (TLS client auth) use any handle.

use std::sync::Arc;

use protocol::SignatureError;
use protocol::keys::{Algorithm, Signer};

use crate::error::PlatformError;
use rustls::SignatureScheme;

/// A private key the agent can sign with but never reads.
pub trait DeviceKey: Signer + std::fmt::Debug {
    /// Signs as X.509 and TLS expect: ECDSA signatures in ASN.1 DER, Ed25519 raw. (COSE's
    /// fixed-length form is [`Signer::sign`].)
    fn sign_x509(&self, message: &[u8]) -> Result<Vec<u8>, SignatureError>;

    /// The key itself (PKCS#8 DER) if it is a software key, for a library that must hold it
    /// to sign (OpenSSL's DTLS); `None` for a key in a secure element, which never leaves it.
    fn software_pkcs8(&self) -> Option<&[u8]> {
        None
    }
}

impl DeviceKey for certs::KeyPair {
    fn sign_x509(&self, message: &[u8]) -> Result<Vec<u8>, SignatureError> {
        rcgen::SigningKey::sign(self, message)
            .map_err(|e| SignatureError::SigningFailed(e.to_string()))
    }

    fn software_pkcs8(&self) -> Option<&[u8]> {
        Some(self.pkcs8_der())
    }
}

/// How rcgen and rustls name the signatures of `algorithm`, or `None` for one this agent cannot
/// use (a key store may hold keys of any kind: they are refused by name, never taken for
/// another).
fn names(
    algorithm: Algorithm,
) -> Option<(
    &'static rcgen::SignatureAlgorithm,
    SignatureScheme,
    rustls::SignatureAlgorithm,
)> {
    use rustls::SignatureAlgorithm as Tls;
    match algorithm {
        Algorithm::Es256 => Some((
            &rcgen::PKCS_ECDSA_P256_SHA256,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            Tls::ECDSA,
        )),
        Algorithm::Es384 => Some((
            &rcgen::PKCS_ECDSA_P384_SHA384,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            Tls::ECDSA,
        )),
        Algorithm::EdDsa => Some((&rcgen::PKCS_ED25519, SignatureScheme::ED25519, Tls::ED25519)),
        _ => None,
    }
}

fn unsupported(key: &dyn DeviceKey) -> PlatformError {
    PlatformError::Key(format!(
        "the key's algorithm {:?} is not supported (P-256, P-384 and Ed25519 are)",
        key.algorithm()
    ))
}

/// rcgen's view of a device key, for building CSRs.
pub struct CsrSigner<'a> {
    key: &'a dyn DeviceKey,
    raw: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
}

impl<'a> CsrSigner<'a> {
    /// Wraps `key`, or says why its algorithm cannot sign a CSR.
    pub fn new(key: &'a dyn DeviceKey) -> Result<Self, PlatformError> {
        let (algorithm, _, _) = names(key.algorithm()).ok_or_else(|| unsupported(key))?;
        Ok(CsrSigner {
            raw: key.public_key().raw().to_vec(),
            key,
            algorithm,
        })
    }
}

impl rcgen::PublicKeyData for CsrSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
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
pub(crate) struct TlsKey {
    key: Arc<dyn DeviceKey>,
    scheme: SignatureScheme,
    algorithm: rustls::SignatureAlgorithm,
}

impl TlsKey {
    /// Wraps `key`, or says why its algorithm cannot authenticate in TLS.
    pub(crate) fn new(key: Arc<dyn DeviceKey>) -> Result<Self, PlatformError> {
        let (_, scheme, algorithm) =
            names(key.algorithm()).ok_or_else(|| unsupported(key.as_ref()))?;
        Ok(TlsKey {
            key,
            scheme,
            algorithm,
        })
    }
}

impl rustls::sign::SigningKey for TlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&self.scheme)
            .then(|| Box::new(self.clone()) as Box<dyn rustls::sign::Signer>)
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        self.algorithm
    }
}

impl rustls::sign::Signer for TlsKey {
    /// rustls signs inside the connection's task; a secure element may take a few hundred
    /// milliseconds, so on a multi-threaded runtime the worker hands its other tasks over first.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let sign = || {
            self.key
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
        self.scheme
    }
}
