//! The onboarder: trusted onboarding and lifecycle management of IoT devices.
//!
//! One core, thin edges (DESIGN 4):
//!
//! - [`core`]: the lifecycle rules (device states, voucher and enrollment decisions, the audit
//!   budget) with no I/O; time and randomness are arguments. A device is
//!   [`core::DeviceId`]: the manufacturer anchor its IDevID chains to, and its serial.
//! - [`service`]: load record -> core decides -> one atomic, durable commit -> reply.
//! - [`store`]: the [`store::Store`] trait and its sled implementation (group commit).
//! - [`audit`]: the hash-chained audit log; [`metrics`]: counters of what was refused or shed.
//! - [`transport`]: QUIC (quinn + rustls): authenticates devices by certificate, frames
//!   requests, calls the service; keeps operational sessions for pushed commands.
//! - [`operator`]: operator actions, the admin HTTP API (axum) and its client.
//! - [`config`], [`pki`], [`server`]: the data directory, the owner PKI, and the wiring.
//! - [`exercise`]: the lifecycle phases driven through the admin API with real agents.
//! - [`demo`]: the end-to-end demonstration on embedded defaults.
//!
//! Order of calls for a device request: the QUIC transport accepts a connection whose client
//! certificate the TLS verifier checked against [`trust::TrustStore`] (within the connection
//! limits of [`transport::limits`]), reads the peer with [`service::Service::identify`] (which
//! learns an IDevID's maker from the anchor its path verifies to), decodes each request with a
//! size limit and a byte budget, and calls
//! [`service::Service::handle`], which returns the response to write back.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]

pub mod audit;
pub mod config;
pub mod control;
pub mod core;
pub mod demo;
pub mod error;
pub mod exercise;
pub mod failpoint;
pub mod metrics;
pub mod operator;
pub mod pki;
pub mod server;
pub mod service;
pub mod store;
pub mod transport;
pub mod trust;
