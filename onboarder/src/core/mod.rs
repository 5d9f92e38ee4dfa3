//! The lifecycle core: decisions about devices, with no I/O.
//!
//! It is written against typed requests and a typed authenticated peer ([`peer::DevicePeer`]),
//! and knows nothing of QUIC, HTTP or sled: the service loads what a decision needs, calls a
//! function here, and commits what it returns. Time and randomness come in as arguments.
//!
//! The data: [`identity`] (who a device is), [`state`] (its lifecycle states and legal moves),
//! [`record`] (everything known about one device, with its certificates, rotation, firmware
//! job and decommissioning), [`release`] (firmware releases and keys), [`campaign`] (staged
//! rollouts), [`policy`] (the registrar's context). The decisions, each returning a
//! [`decision::Decision`]: [`onboard`], [`renew`], [`revoke`], [`firmware`], [`decommission`],
//! [`import`] (vouchers and anchors), [`network_access`] (what a RADIUS server asks), and [`campaign::Campaign::next_step`]. Around them:
//! [`error`] (the one mapping of refusals to wire codes) and [`audit_budget`].

mod access;
pub mod audit_budget;
pub mod campaign;
pub mod decision;
pub mod decommission;
pub mod error;
pub mod firmware;
pub mod identity;
pub mod import;
mod issue;
pub mod label;
pub mod network_access;
pub mod onboard;
pub mod peer;
pub mod policy;
pub mod query;
pub mod record;
pub mod release;
pub mod renew;
pub mod revoke;
pub mod roots;
pub mod sanitization;
pub mod sbom;
pub mod security;
pub mod state;
pub mod support;
#[cfg(test)]
pub(crate) mod testkit;
pub mod vex;

pub use decision::Decision;
pub use error::LifecycleError;
pub use identity::{DeviceId, MakerId};
pub use peer::{Channel, CredentialKind, DevicePeer};
pub use policy::{Entropy, IssuingCa, NetworkPolicy, OwnerRoots, Policy, Registrar};
pub use record::{CertStatus, DeviceRecord, IssuedCert, Rotation, RotationState};
pub use state::DeviceState;
