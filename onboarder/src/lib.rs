//! The onboarder: trusted onboarding and lifecycle management of IoT devices.
//!
//! One core, thin edges (DESIGN 4):
//!
//! - [`core`]: the lifecycle rules (device states, every decision on a device request or an
//!   order, voucher import, campaign steps, the audit budget) as pure functions; time and
//!   randomness are arguments, and a test keeps I/O out. A device is [`core::DeviceId`]: the
//!   manufacturer anchor its IDevID chains to, and its serial.
//! - [`service`]: the one door. [`service::Service`] and its one load -> decide -> commit loop
//!   (batched for orders over many devices), which carries out every effect of a commit (TLS
//!   revocations, CRL notice, job index, campaign wake-up); every state change goes through it.
//! - [`store`]: the [`store::Store`] and [`store::images::ImageStore`] traits, which the server
//!   takes as parameters ([`server::Backends`]); `store/sled/` is the embedded backend.
//! - [`audit`]: the hash-chained audit log; [`metrics`]: counters of what was refused or shed.
//! - [`transport`]: QUIC (quinn + rustls): authenticates devices by certificate, frames
//!   requests, calls the service; keeps operational sessions for pushed commands. Its
//!   [`transport::https`] listener opens the same service to standard clients (EST, BRSKI's
//!   status reports) and serves the CRLs.
//! - [`masa`]: where nonced vouchers come from, for devices without a trustworthy clock.
//! - [`radius`]: network access through FreeRADIUS: the CA directory its EAP-TLS module reads,
//!   the endpoints its `rest` module asks at every login, and the configuration it runs with.
//! - [`control`]: the background loops: command push, CRL publisher, CA and registrar
//!   rollover (finished at start if a crash interrupted it), campaign engine.
//! - [`operator`]: the operator's edges: the admin HTTP API (axum), its client, views, and the
//!   command line by topic.
//! - [`config`], [`pki`], [`server`]: the data directory, the owner PKI, and the wiring.
//! - [`exercise`]: the lifecycle phases driven through the admin API with real agents.
//! - [`demo`]: the end-to-end demonstration on embedded defaults.
//! - [`failpoint`]: named crash points for the kill tests; `fuzzing` (a feature): the private
//!   decoders' entry points for the fuzz targets in `fuzz/`.
//!
//! Order of calls for a device request: the QUIC transport accepts a connection whose client
//! certificate the TLS verifier checked against [`trust::TrustStore`] (within the connection
//! limits of [`transport::limits`]), reads the peer with [`service::Service::identify`] (which
//! learns an IDevID's maker from the anchor its path verifies to), decodes each request with a
//! size limit and a byte budget, and calls
//! [`service::Service::handle`], which returns the response to write back.
// No unsafe code, but for the few OpenSSL calls the `openssl` crate does not wrap, which the
// DTLS layer of the CoAP listener needs (transport::coap::dtls, where each is explained), and
// one getsockopt that no safe wrapper offers (transport::backlog).
#![deny(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]

pub mod audit;
pub mod config;
pub mod control;
pub mod core;
pub mod demo;
pub mod error;
pub mod exercise;
pub mod failpoint;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod masa;
pub mod metrics;
pub mod operator;
pub mod pki;
pub mod radius;
pub mod server;
pub mod service;
pub mod store;
pub mod transport;
pub mod trust;
