//! X.509 and keys for the onboarder and its devices.
//!
//! - [`brski`]: JSON vouchers and voucher requests in CMS (RFC 8366, RFC 8995), beside COSE.
//! - [`key`]: P-256 (default) and Ed25519 key pairs, PEM in and out, COSE signing.
//! - [`files`]: atomic PEM file I/O; secrets written 0600; size-limited reads.
//! - [`ca`]: root and intermediate CAs, validity, random serial numbers.
//! - [`profile`]: IDevID (802.1AR), LDevID, registrar and signer certificate profiles.
//! - [`csr`]: CSR building (device) and policy checking (server), bound to the TLS session.
//! - [`chain`]: path validation against anchors with time checks.
//! - [`cms`]: CMS SignedData with one signer, the envelope of BRSKI's JSON vouchers.
//! - [`crl`]: X.509 v2 CRLs with reason codes and CRL numbers.
//! - [`inspect`]: reading serialNumber, hardwareModuleName, MUD URL and more back.
//! - [`identity`]: a device's birth identity bundle as the factory leaves it.
//! - [`masa`]: the manufacturer's online voucher service (RFC 8995 5.5), `factory masa serve`.
//! - [`factory`]: the manufacturer: root CA, voucher signing (MASA), firmware key.
//!
//! Time is always passed in as seconds since the Unix epoch, so every check is reproducible.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]

pub mod brski;
pub mod ca;
pub mod chain;
pub mod cms;
pub mod crl;
pub mod csr;
pub mod der;
pub mod error;
pub mod factory;
pub mod files;
pub mod identity;
pub mod inspect;
pub mod key;
pub mod masa;
pub mod pkcs7;
pub mod profile;

pub use ca::{Ca, CaName, Validity};
pub use error::{CertError, ChainError, CsrError};
pub use identity::{Birth, Identity};
pub use inspect::CertInfo;
pub use key::{KeyKind, KeyPair};

/// The current time in seconds since the Unix epoch, for binaries and drivers. Libraries take
/// time as a parameter instead.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `secs` since the epoch as an RFC 3339 UTC time (`2026-12-02T05:22:38Z`), for people (logs,
/// terminals); the number itself when it is out of range.
pub fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}
