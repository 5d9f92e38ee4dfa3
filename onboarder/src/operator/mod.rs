//! The operator's edges: the admin HTTP API and its client, the JSON views, the command line,
//! and what is shown to people. Every order goes to the [`crate::service::Service`] (through
//! [`crate::control::Control`] when it also reaches devices, files or CRLs).

pub mod api;
pub mod cli;
pub mod client;
pub mod console;
pub mod qr;
pub mod sanitization;
pub mod terminal;
pub mod views;

pub use crate::service::{AnchorImport, ImportReport, OperatorError, Rejected};

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    certs::inspect::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}
