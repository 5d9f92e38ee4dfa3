//! The lifecycle core: decisions about devices, with no I/O.
//!
//! It is written against typed requests and a typed authenticated peer ([`peer::DevicePeer`]),
//! and knows nothing of QUIC, HTTP or sled: the service loads a record, calls a function here,
//! and commits what it returns. Time and randomness come in as arguments.

pub mod device;
pub mod error;
pub mod onboard;
pub mod peer;
pub mod policy;

pub use device::{CertStatus, DeviceRecord, DeviceState, IssuedCert};
pub use error::LifecycleError;
pub use onboard::Decision;
pub use peer::{CredentialKind, DevicePeer};
pub use policy::{Entropy, NetworkPolicy, Policy, Registrar};
