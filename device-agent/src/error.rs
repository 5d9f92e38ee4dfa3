//! Errors of the agent. They say which check failed; they never contain key material.

use protocol::message::ErrorCode;
use thiserror::Error;

/// Failure of a platform service (keys, state, network).
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum PlatformError {
    /// Reading or writing storage failed.
    #[error(transparent)]
    Storage(#[from] certs::CertError),
    /// Stored state could not be decoded.
    #[error("stored state is unreadable: {0}")]
    Corrupt(String),
    /// A key operation failed.
    #[error("key store: {0}")]
    Key(String),
    /// A firmware slot operation failed.
    #[error("firmware slots: {0}")]
    Firmware(String),
    /// Sanitization failed.
    #[error("wipe: {0}")]
    Wipe(String),
    /// The network could not be configured.
    #[error("network: {0}")]
    Network(String),
}

/// Why the server refused the device's credential, from its TLS alert (RFC 8446 6.2) or its
/// close code.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialRefusal {
    /// The certificate is revoked (certificate_revoked, or the onboarder's revoked close code).
    Revoked,
    /// The certificate has expired (certificate_expired).
    Expired,
    /// The certificate's issuer is not trusted there (unknown_ca): another owner, or a
    /// manufacturer the owner never imported.
    UnknownIssuer,
    /// Any other refusal: a bad, unsupported or unknown certificate, access denied, a signature
    /// that does not verify, a certificate required, the onboarder's unauthorized close code.
    Rejected,
}

/// Why the agent could not complete a step.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum AgentError {
    /// The device's birth identity is unusable.
    #[error("identity: {0}")]
    Identity(#[from] certs::CertError),
    /// A platform service failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// The server could not be reached or the connection failed.
    #[error("connection: {0}")]
    Connection(String),
    /// The server turned the connection away before any handshake because it is at capacity
    /// (QUIC's CONNECTION_REFUSED): tried again, but not before [`crate::Backoff::busy`].
    #[error("server busy: {0}")]
    Busy(String),
    /// The server refused the device's certificate (a TLS alert about it in the handshake, or
    /// the connection closed as unauthorized or revoked): nothing changes until an operator
    /// acts, so it is not retried soon.
    #[error("credential refused by the server ({reason:?}): {detail}")]
    CredentialRefused {
        /// Why, as far as the server said.
        reason: CredentialRefusal,
        /// What the connection reported.
        detail: String,
    },
    /// The server refused the request.
    #[error("refused by the server ({code:?}): {message}")]
    Refused {
        /// The server's code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The voucher failed the device's checks (RFC 8995 5.6).
    #[error("voucher refused: {0}")]
    Voucher(#[from] protocol::voucher::VoucherError),
    /// The server's certificate does not chain to the CA the voucher pins: not our owner.
    #[error("registrar refused: {0}")]
    RogueRegistrar(String),
    /// The enrollment failed the device's checks.
    #[error("enrollment refused: {0}")]
    BadEnrollment(String),
    /// Owner roots the owner sent were not taken: they would not authenticate this server or
    /// this device, or are not roots.
    #[error("owner roots refused: {0}")]
    BadAnchors(String),
    /// The server answered something that makes no sense at this step.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A message could not be decoded.
    #[error(transparent)]
    Decode(#[from] protocol::DecodeError),
    /// A signature could not be made.
    #[error(transparent)]
    Sign(#[from] protocol::SignatureError),
    /// A firmware manifest or image was refused.
    #[error("firmware refused: {0}")]
    Firmware(#[from] protocol::manifest::ManifestError),
}

impl AgentError {
    /// Whether trying again later may succeed without anyone changing anything (network
    /// trouble, a busy or restarting server), as opposed to a refusal that needs an operator
    /// (a refused credential, a refused request, a failed check).
    pub fn is_transient(&self) -> bool {
        match self {
            AgentError::Connection(_) | AgentError::Busy(_) => true,
            AgentError::Refused { code, .. } => matches!(code, ErrorCode::Unavailable),
            _ => false,
        }
    }
}
