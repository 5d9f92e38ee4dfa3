//! The device agent: what a device maker embeds to have a device onboarded, kept current and
//! (later) updated and decommissioned by an onboarder.
//!
//! - [`platform`]: traits for what the device provides ([`platform::KeyStore`],
//!   [`platform::StateStore`], [`platform::NetworkApplier`], [`platform::FirmwareSlots`],
//!   [`platform::Wiper`]) and file-based defaults.
//! - [`machine`]: the device's decisions without I/O: voucher, registrar and enrollment checks,
//!   persisted state, command replies, and what comes next at each step of onboarding, a
//!   session, a renewal, an update, a decommissioning, after a crash and after a failure.
//! - [`transport`]: the QUIC client (provisional TLS for onboarding, pinned TLS afterwards).
//! - [`driver`]: [`Agent`], which ties them together: `onboard`, `connect`, `run`.
//! - [`clock`]: the one source of wall-clock time, which tests may move forward.
//!
//! The agent never sends anything secret (a CSR, a status) before the voucher and the
//! registrar's certificate passed its checks, and stores an enrollment in one atomic write.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]

pub mod clock;
pub mod driver;
pub mod error;
pub mod machine;
pub mod platform;
pub mod transport;

pub use clock::Clock;
pub use driver::{Agent, AgentOptions, Backoff};
pub use error::{AgentError, CredentialRefusal, PlatformError};
