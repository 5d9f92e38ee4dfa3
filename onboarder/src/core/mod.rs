//! The lifecycle core: decisions about devices, with no I/O.
//!
//! It is written against typed requests and a typed authenticated peer ([`peer::DevicePeer`]),
//! and knows nothing of QUIC, HTTP or sled: the service loads a record, calls a function here,
//! and commits what it returns. Time and randomness come in as arguments.

mod access;
pub mod audit_budget;
pub mod campaign;
pub mod decommission;
pub mod device;
pub mod error;
pub mod firmware;
pub mod identity;
mod issue;
pub mod onboard;
pub mod peer;
pub mod policy;
pub mod renew;
pub mod revoke;

pub use device::{CertStatus, DeviceRecord, DeviceState, IssuedCert, Rotation, RotationState};
pub use error::LifecycleError;
pub use identity::{DeviceId, MakerId};
pub use onboard::Decision;
pub use peer::{CredentialKind, DevicePeer};
pub use policy::{Entropy, IssuingCa, NetworkPolicy, Policy, Registrar};
