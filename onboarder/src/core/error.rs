//! Why the lifecycle core refuses a request, and the one mapping to wire codes.

use protocol::message::ErrorCode;
use protocol::{DecodeError, SignatureError};
use thiserror::Error;

use super::identity::DeviceId;
use super::state::DeviceState;

/// A refusal by the lifecycle core. Messages name devices, states and checks, never keys.
#[non_exhaustive]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LifecycleError {
    /// The request could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The device is not expected here (no voucher or allow-list entry for its maker and
    /// serial).
    #[error("unknown device {0}")]
    UnknownDevice(DeviceId),
    /// The device is expected but no voucher is on file.
    #[error("no voucher on file for {0}")]
    NoVoucher(DeviceId),
    /// The voucher on file has expired.
    #[error("the voucher for {device} expired at {expires_on}")]
    VoucherExpired {
        /// The device.
        device: DeviceId,
        /// Voucher expiry (seconds since the epoch).
        expires_on: u64,
    },
    /// A signature did not verify.
    #[error("bad signature: {0}")]
    BadSignature(#[from] SignatureError),
    /// The request is stale, or was made for another TLS session (replay).
    #[error("stale or replayed request: {0}")]
    StaleRequest(String),
    /// The registrar certificate in the voucher request is not ours.
    #[error(
        "proximity check failed: the registrar certificate the device saw is not this registrar's"
    )]
    ProximityMismatch,
    /// The request names another device than the authenticated one.
    #[error("request names serial {found:?}, but the authenticated device is {expected:?}")]
    WrongSerial {
        /// The authenticated serial.
        expected: String,
        /// The serial in the request.
        found: String,
    },
    /// The device's state does not allow the request.
    #[error("device {device} is {state}: {action} is not allowed")]
    WrongState {
        /// The device.
        device: DeviceId,
        /// Its current state.
        state: DeviceState,
        /// What was asked.
        action: &'static str,
    },
    /// The CSR was refused.
    #[error("CSR refused: {0}")]
    Csr(#[from] certs::CsrError),
    /// The device is quarantined.
    #[error("device {0} is quarantined")]
    Quarantined(DeviceId),
    /// The device was decommissioned by this owner, who does not take it back.
    #[error(
        "device {0} was decommissioned by this owner and is not taken back here; its new owner \
         onboards it on their own onboarder, with a voucher from its manufacturer that pins \
         their CA"
    )]
    Decommissioned(DeviceId),
    /// The peer's credential does not allow the request.
    #[error("not allowed: {0}")]
    Unauthorized(String),
    /// The request is well-formed but not acceptable.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Issuing or storing failed on our side; the request can be retried.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl LifecycleError {
    /// The wire code for this refusal: the one total mapping.
    pub fn code(&self) -> ErrorCode {
        use LifecycleError as E;
        match self {
            E::Decode(DecodeError::TooLarge { .. }) => ErrorCode::TooLarge,
            E::Decode(DecodeError::UnsupportedVersion { .. }) => ErrorCode::UnsupportedVersion,
            E::Decode(_) | E::BadRequest(_) => ErrorCode::BadRequest,
            E::UnknownDevice(_) => ErrorCode::UnknownDevice,
            E::NoVoucher(_) => ErrorCode::NoVoucher,
            E::VoucherExpired { .. } => ErrorCode::VoucherExpired,
            E::BadSignature(_) => ErrorCode::BadSignature,
            E::StaleRequest(_) | E::Csr(certs::CsrError::BindingMismatch) => {
                ErrorCode::StaleRequest
            }
            E::ProximityMismatch => ErrorCode::ProximityMismatch,
            E::WrongSerial { .. } => ErrorCode::WrongSerial,
            E::WrongState { .. } | E::Decommissioned(_) => ErrorCode::WrongState,
            E::Csr(certs::CsrError::Malformed(_) | certs::CsrError::BadSignature) => {
                ErrorCode::CsrInvalid
            }
            E::Csr(_) => ErrorCode::CsrPolicy,
            E::Quarantined(_) => ErrorCode::Quarantined,
            E::Unauthorized(_) => ErrorCode::Unauthorized,
            E::Unavailable(_) => ErrorCode::Unavailable,
        }
    }

    /// The wire form of this refusal.
    pub fn to_wire(&self) -> protocol::message::WireError {
        protocol::message::WireError {
            code: self.code(),
            message: self.to_string(),
        }
    }
}

impl From<protocol::voucher::VoucherError> for LifecycleError {
    fn from(e: protocol::voucher::VoucherError) -> Self {
        use protocol::voucher::VoucherError as V;
        match e {
            V::Decode(d) => LifecycleError::Decode(d),
            V::Signature(s) => LifecycleError::BadSignature(s),
            V::WrongIssuer => LifecycleError::Unauthorized(
                "the voucher on file names another IDevID issuer than this device's".into(),
            ),
            other => LifecycleError::BadRequest(other.to_string()),
        }
    }
}
