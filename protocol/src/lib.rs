//! Wire format of the onboarder and its device agent.
//!
//! This is the bottom layer: it knows the messages, the signed artefacts and their limits, and
//! nothing of sockets, files, clocks or X.509. Everything here is a pure function of its inputs,
//! so both the server and the agent (and any independent implementation) agree on every byte.
//!
//! - [`attestation`]: the device-signed wipe attestation of a decommissioning.
//! - [`cbor`]: CBOR (RFC 8949) encode/decode with a size limit on every decode.
//! - [`coap`]: what both sides of CoAP agree on: option values, content formats, paths.
//! - [`frame`]: length-prefixed framing for QUIC streams, with a maximum frame size.
//! - `frame_io` (cargo feature `tokio`): reading and writing frames over async streams, with
//!   buffers that grow as bytes arrive, a hold budget and a stall timeout.
//! - [`keys`]: public keys and the [`keys::Signer`] trait through which private keys are used.
//! - [`cose`]: COSE_Sign1 (RFC 9052) signing and verification with a content type per artefact.
//! - [`manifest`]: the signed firmware manifest (SUIT information model) and its checks.
//! - [`voucher`]: the voucher request and the voucher (RFC 8366bis fields, constrained-BRSKI
//!   style COSE signing) and the checks a device applies to a voucher.
//! - [`message`]: versioned request/response/command messages and their typed error codes.
//!
//! Order of use on the wire: build a [`message::Request`], [`message::encode`] it, wrap it with
//! [`frame::encode`]; the peer reads the header with [`frame::payload_len`], the payload, and
//! calls [`message::decode`] with the limit for that direction.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]

pub mod attestation;
pub mod cbor;
pub mod coap;
pub mod cose;
pub mod error;
pub mod frame;
#[cfg(feature = "tokio")]
pub mod frame_io;
pub mod keys;
pub mod manifest;
pub mod message;
pub mod voucher;

pub use error::{DecodeError, SignatureError};

/// ALPN of the native QUIC protocol. It names the protocol and its major version, so that an
/// incompatible peer fails at the handshake instead of on the first message.
pub const ALPN: &[u8] = b"onboarder/1";

/// Version carried in every message envelope.
pub const VERSION: u16 = 1;

/// Label of the TLS exporter (RFC 5705/8446) used to bind signed requests and CSRs to the TLS
/// session they travel in (RFC 9266 style; tls-unique does not exist in TLS 1.3).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-onboarder-session-binding";
/// RFC 9266's tls-exporter label: the binding over HTTPS, where standard clients (EST) compute
/// it too.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// Length of the session-binding exporter value.
pub const EXPORTER_LEN: usize = 32;
