//! Errors of the wire layer. They never carry key material.

use thiserror::Error;

/// Why bytes could not be turned into a message or artefact.
#[non_exhaustive]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The input is larger than the limit for this kind of message.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// Limit that applied.
        limit: usize,
    },
    /// The input is not well-formed CBOR, or does not have the expected shape.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes remain after a complete message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// The message carries a protocol version this build does not speak.
    #[error("unsupported protocol version {found} (this build speaks {supported})")]
    UnsupportedVersion {
        /// Version found in the message.
        found: u16,
        /// Version this build speaks.
        supported: u16,
    },
    /// A signed artefact carries a content type other than the one expected here, so it cannot
    /// be mistaken for another kind of artefact.
    #[error("wrong content type: expected {expected}, found {found}")]
    WrongContentType {
        /// The content type expected.
        expected: &'static str,
        /// The content type found (empty when absent).
        found: String,
    },
}

/// Why a signature was not accepted.
#[non_exhaustive]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// The signature does not verify with the given key.
    #[error("signature does not verify")]
    Invalid,
    /// The artefact names an algorithm that does not match the verifying key, or one we do
    /// not accept.
    #[error("signature algorithm {0} is not accepted for this key")]
    AlgorithmMismatch(String),
    /// A public key is not of a supported type or is malformed.
    #[error("malformed public key: {0}")]
    MalformedKey(&'static str),
    /// The signer failed to produce a signature (for example a secure element error).
    #[error("signing failed: {0}")]
    SigningFailed(String),
}
