//! Errors of the onboarder's wiring: its data directory and PKI files, starting the server,
//! the admin API's client, the command line and the demo. The lifecycle rules have their own
//! ([`crate::core::LifecycleError`]), and so have the operator's requests
//! ([`crate::service::OperatorError`]) and the store ([`crate::store::StoreError`]); this one
//! carries those and says where they happened.

use std::path::PathBuf;

use thiserror::Error;

use crate::operator::client::ClientError;
use crate::service::OperatorError;
use crate::store::StoreError;

/// What went wrong, with where.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A socket or runtime failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate, key or PEM file was refused.
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    /// The settings or the data directory are not usable.
    #[error("{0}")]
    Config(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An operator request was refused or failed.
    #[error(transparent)]
    Operator(#[from] OperatorError),
    /// The TLS configuration was refused.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The admin API could not be reached or refused the request.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// A device agent failed (the demo's).
    #[error(transparent)]
    Agent(#[from] device_agent::AgentError),
    /// JSON could not be encoded or decoded.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A task the work was handed to failed.
    #[error("a background task failed: {0}")]
    Task(String),
    /// Work that ran but did not succeed (some devices failed, some orders were refused).
    #[error("{0}")]
    Failed(String),
    /// An error, with what was being done.
    #[error("{context}: {source}")]
    Context {
        /// What was being done.
        context: String,
        /// What went wrong.
        source: Box<Error>,
    },
}

/// The result of the onboarder's wiring.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Says what was being done when an error happened.
pub trait Context<T> {
    /// Wraps the error with `context`.
    fn context(self, context: impl Into<String>) -> Result<T>;
    /// Wraps the error with the context `f` makes (only when there is an error).
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: context.into(),
            source: Box::new(e.into()),
        })
    }

    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: f().into(),
            source: Box::new(e.into()),
        })
    }
}

impl Error {
    /// An I/O error at `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An I/O error while doing `what` (not about one file).
    pub fn os(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Os {
            what: what.into(),
            source,
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Task(e.to_string())
    }
}
