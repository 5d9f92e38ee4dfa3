//! Errors of the X.509 layer. Messages name files, fields and policies, never key material.

use std::path::PathBuf;

use thiserror::Error;

/// Anything that can go wrong building, reading or checking certificates and keys.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum CertError {
    /// A private key could not be read or generated.
    #[error("key: {0}")]
    Key(String),
    /// A certificate could not be generated (bad parameters).
    #[error("certificate generation: {0}")]
    Generate(String),
    /// A certificate or CRL could not be parsed.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// Parser detail.
        detail: String,
    },
    /// A certificate lacks something its profile requires.
    #[error("profile: {0}")]
    Profile(String),
    /// A CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// A chain did not validate.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is larger than any certificate, key or list we accept.
    #[error("{}: {size} bytes exceeds the limit of {limit}", path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A signature could not be made with a key.
    #[error("signing: {0}")]
    Sign(#[from] protocol::SignatureError),
}

impl CertError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CertError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parse(what: &'static str, detail: impl std::fmt::Display) -> Self {
        CertError::Parse {
            what,
            detail: detail.to_string(),
        }
    }
}

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        CertError::Generate(e.to_string())
    }
}

/// Why a CSR was refused by the issuance policy.
#[non_exhaustive]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CsrError {
    /// Not a well-formed PKCS#10 request.
    #[error("malformed CSR: {0}")]
    Malformed(String),
    /// The CSR's signature does not verify with its own key (no proof of possession).
    #[error("CSR signature does not verify (no proof of possession)")]
    BadSignature,
    /// The subject is not the authenticated device's.
    #[error("CSR subject serialNumber is {found:?}, expected {expected:?}")]
    WrongSubject {
        /// The serial the policy requires.
        expected: String,
        /// What the CSR asks for.
        found: String,
    },
    /// The key type is not one we issue for (P-256, P-384 or Ed25519).
    #[error("CSR key type is not accepted (P-256, P-384 or Ed25519 only)")]
    KeyType,
    /// The key is one the device already uses (IDevID key, or the old LDevID key on re-key).
    #[error("CSR reuses an existing key; a fresh key is required")]
    KeyReuse,
    /// The CSR is not bound to this TLS session.
    #[error("CSR session binding (challengePassword) is missing or belongs to another session")]
    BindingMismatch,
}

/// Why a certificate chain did not validate.
#[non_exhaustive]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// The certificate has expired.
    #[error("certificate expired")]
    Expired,
    /// The certificate is not valid yet.
    #[error("certificate not valid yet")]
    NotYetValid,
    /// No path to a trusted anchor.
    #[error("certificate does not chain to a trusted anchor")]
    UnknownIssuer,
    /// A signature in the chain does not verify.
    #[error("bad signature in certificate chain")]
    BadSignature,
    /// The certificate is not for this purpose (EKU).
    #[error("certificate is not valid for this purpose")]
    WrongUsage,
    /// Some other defect, as reported by the validator.
    #[error("certificate chain invalid: {0}")]
    Other(String),
}
