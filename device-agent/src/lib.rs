//! The device agent: what a device maker embeds to have a device onboarded, kept current,
//! updated and, at the end of its life, decommissioned by an onboarder.
//!
//! # Embedding it
//!
//! The order of calls (`examples/minimal.rs` is the whole of it):
//!
//! 1. Where the onboarder is: a [`transport::ServerAddress`] (`host:port`, resolved at every
//!    connection) and a [`transport::Endpoint`] (one UDP socket serves any number of agents).
//! 2. What the device provides: a [`platform::Platform`]. [`platform::Platform::files`] is the
//!    reference one on a Linux file system; replace any part of it.
//! 3. [`Agent::new`] (or [`Agent::with_files`]) with the birth identity
//!    ([`certs::Identity`]: certificates only) and [`AgentOptions`].
//! 4. [`Agent::run`] until a future of yours completes: it onboards if needed (the voucher,
//!    the registrar's certificate, the enrollment), keeps the operational session, answers
//!    commands, renews the certificate before it expires, installs signed firmware on trial,
//!    wipes and attests at the owner's order, and retries failures with backoff. The steps
//!    are public too ([`Agent::onboard`], [`Agent::connect`], [`Agent::renew`],
//!    [`Agent::update`]) for devices that sleep between short sessions.
//!
//! # Porting to a new device
//!
//! Each trait of [`platform`] is one thing only the device knows how to do:
//!
//! | trait | what it does | reference implementation |
//! |---|---|---|
//! | [`platform::KeyStore`] | holds the birth key and makes and keeps operational keys; signs through [`platform::DeviceKey`] handles, so keys may never leave a secure element | files ([`platform::files`]); PKCS#11 (`platform::pkcs11`, feature `pkcs11`) |
//! | [`platform::StateStore`] | saves the agent's state atomically | a file replaced by rename |
//! | [`platform::NetworkApplier`] | applies the network credentials | a file, or a hook ([`platform::hooks`]) |
//! | [`platform::FirmwareSlots`] | stages, installs, boots on trial, commits or rolls back firmware | two directories (A/B), plus hooks |
//! | [`platform::Wiper`] | erases the owner's data and credentials and says what it erased | overwrite and cryptographic erase of a vault, plus a hook |
//!
//! Signing may take a secure element hundreds of milliseconds: the agent calls keys off its
//! async workers. Time comes from one [`Clock`]. Nothing else touches the device.
//!
//! # Inside
//!
//! - [`machine`]: the device's decisions without I/O: voucher, registrar and enrollment checks,
//!   persisted state, command replies, and what comes next at each step of onboarding, a
//!   session, a renewal, an update, a decommissioning, after a crash and after a failure.
//! - [`transport`]: the sessions, by [`transport::Transport`]: QUIC (provisional TLS for
//!   onboarding, pinned TLS afterwards), the same over HTTPS where UDP is blocked, and CoAP
//!   over DTLS for constrained networks.
//! - [`driver`]: [`Agent`], which carries out what the machine decides.
//! - [`clock`]: the one source of wall-clock time, which tests may move forward.
//!
//! The agent never sends anything secret (a CSR, a status) before the voucher and the
//! registrar's certificate passed its checks, and stores an enrollment in one atomic write.
//! The crate's features: `pkcs11` (PKCS#11 key store) and `cli` (the `device-agent` daemon's
//! own dependencies); an embedding takes neither with `default-features = false`.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]

pub mod clock;
pub mod driver;
pub mod error;
pub mod machine;
pub mod platform;
pub mod systemd;
pub mod transport;

pub use clock::Clock;
pub use driver::{Agent, AgentOptions, Backoff, hardware_facts};
pub use error::{AgentError, CredentialRefusal, PlatformError};
