//! Why an operator's request to the service failed. The admin API maps each kind to an HTTP
//! status (`operator::api`); nothing here knows HTTP.

use thiserror::Error;

use crate::audit::AuditError;
use crate::core::LifecycleError;
use crate::store::StoreError;

/// Why an operator request failed.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum OperatorError {
    /// The input is not acceptable.
    #[error("{0}")]
    BadInput(String),
    /// No such thing.
    #[error("{0} not found")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit chain is broken.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A firmware release was refused: its manifest or its image does not check out.
    #[error("release refused: {0}")]
    Release(#[from] protocol::manifest::ManifestError),
    /// A release's SBOM was refused (it is not the one its manifest names, or not readable).
    #[error("SBOM refused: {0}")]
    Sbom(#[from] crate::core::sbom::SbomError),
    /// A firmware release whose manifest no imported key of its vendor signed.
    #[error("the manifest is not signed by a firmware key of {0:?}")]
    UntrustedRelease(String),
    /// The lifecycle rules refuse the order.
    #[error(transparent)]
    Refused(LifecycleError),
    /// The onboarder could not carry the order out (its PKI files, a background task): nothing
    /// in the order was wrong.
    #[error("{0}")]
    Internal(String),
}

impl From<LifecycleError> for OperatorError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::UnknownDevice(id) => OperatorError::NotFound(format!("device {id}")),
            other => OperatorError::Refused(other),
        }
    }
}
