//! Versioned messages of the native QUIC protocol.
//!
//! Each request travels on its own bidirectional stream: the device opens a stream, sends one
//! framed [`Request`] and reads one framed [`Response`]. The server pushes [`Command`]s on streams
//! it opens on an operational session, and the device answers each with a [`CommandReply`].
//! Every message is a CBOR array `[version, body]`, so a peer speaking another version is refused
//! with [`DecodeError::UnsupportedVersion`] before its body is interpreted.

use std::collections::BTreeMap;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::VERSION;
use crate::error::DecodeError;

/// Largest request a server accepts (a CSR or a voucher request is a few kilobytes).
pub const MAX_REQUEST: usize = 64 * 1024;
/// Largest response or command a device accepts.
pub const MAX_RESPONSE: usize = crate::frame::MAX_FRAME;

/// Encodes a message in its versioned envelope.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    crate::cbor::to_vec(&(VERSION, msg))
}

/// Decodes a message from its versioned envelope, refusing other versions and inputs over
/// `limit` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    let (version, IgnoredAny) = crate::cbor::from_slice::<(u16, IgnoredAny)>(bytes, limit)?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    let (_, msg) = crate::cbor::from_slice::<(u16, T)>(bytes, limit)?;
    Ok(msg)
}

/// A request from a device to the onboarder.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// A signed voucher request (COSE_Sign1 of a [`crate::voucher::VoucherRequest`]).
    /// Answered by [`Response::Voucher`]. IDevID sessions only.
    VoucherRequest(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The device's verdict on the voucher (RFC 8995 5.7). Answered by [`Response::Ack`].
    /// A device that accepts the voucher says so with its [`Request::Enroll`] instead (one
    /// round trip and one write fewer); a rejection comes alone, as there is nothing to enroll.
    VoucherStatus(Status),
    /// A PKCS#10 CSR (DER) for the LDevID. Answered by [`Response::Enrolled`].
    Enroll {
        /// The CSR, DER.
        #[serde(with = "serde_bytes")]
        csr: Vec<u8>,
        /// The device accepts the voucher it was just given: the server records the voucher
        /// status (RFC 8995 5.7) and the enrollment in one decision. Absent in requests of
        /// agents that send [`Request::VoucherStatus`] first, and of EST clients.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        voucher_accepted: bool,
    },
    /// The device stored its enrollment (or failed to). Answered by [`Response::Ack`].
    /// Success need not be sent: the device's first [`Request::Hello`] with the new LDevID
    /// confirms it (it evidently stored it), as it confirms a renewal.
    EnrollStatus(Status),
    /// Opens an operational session (LDevID sessions only). Answered by [`Response::Welcome`].
    Hello(Hello),
    /// EST simplereenroll: a CSR for a fresh key, same subject, over an LDevID session.
    /// Answered by [`Response::Enrolled`]; the new certificate is confirmed by opening a session
    /// with it.
    Reenroll {
        /// The CSR, DER.
        #[serde(with = "serde_bytes")]
        csr: Vec<u8>,
    },
    /// A piece of a firmware image offered to this device. Answered by [`Response::Chunk`].
    FirmwareChunk {
        /// SHA-256 of the image (from its manifest).
        #[serde(with = "serde_bytes")]
        digest: Vec<u8>,
        /// First byte wanted.
        offset: u64,
        /// Bytes wanted (at most [`MAX_CHUNK`]).
        length: u32,
    },
    /// Progress of a firmware update on the device. Answered by [`Response::Ack`].
    FirmwareStatus(FirmwareReport),
    /// The signed wipe attestation (COSE_Sign1 of a
    /// [`crate::attestation::WipeAttestation`]) answering a [`Command::Decommission`].
    /// Answered by [`Response::Ack`]; the device's credentials are revoked at once.
    WipeAttestation(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The device recorded the end-of-support notice of a [`Command::SupportNotice`] (the end
    /// date it names). Answered by [`Response::Ack`].
    SupportNoticeRecorded {
        /// The end of support the device recorded (seconds since the epoch).
        ends_on: u64,
    },
    /// A piece of the application data a device hands back before its wipe (encrypted to its
    /// owner; see [`Command::Decommission`]). Answered by [`Response::Ack`]; a piece the server
    /// already has is acknowledged again.
    DataExport(DataChunk),
    /// Security events the device saw, oldest first, at most [`MAX_SECURITY_EVENTS`].
    /// Answered by [`Response::Ack`]; events the server already has (by sequence number) are
    /// ignored, so a batch may be sent again after a lost answer.
    SecurityEvents(Vec<SecurityEvent>),
}

impl Request {
    /// An enrollment request for `csr` alone (EST simpleenroll; no voucher status with it).
    pub fn enroll(csr: Vec<u8>) -> Self {
        Request::Enroll {
            csr,
            voucher_accepted: false,
        }
    }

    /// The operation's name, for metrics and logs (no payload in it).
    pub fn operation(&self) -> &'static str {
        match self {
            Request::VoucherRequest(_) => "voucher_request",
            Request::VoucherStatus(_) => "voucher_status",
            Request::Enroll { .. } => "enroll",
            Request::EnrollStatus(_) => "enroll_status",
            Request::Hello(_) => "hello",
            Request::Reenroll { .. } => "reenroll",
            Request::FirmwareChunk { .. } => "firmware_chunk",
            Request::FirmwareStatus(_) => "firmware_status",
            Request::WipeAttestation(_) => "wipe_attestation",
            Request::SupportNoticeRecorded { .. } => "support_notice",
            Request::SecurityEvents(_) => "security_events",
            Request::DataExport(_) => "data_export",
        }
    }
}

/// Largest encrypted data export a device may hand back.
pub const MAX_EXPORT: u64 = 16 * 1024 * 1024;
/// Largest piece of one [`Request::DataExport`] (under [`MAX_REQUEST`] with its envelope).
pub const MAX_EXPORT_CHUNK: usize = 48 * 1024;

/// A piece of a data export, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataChunk {
    /// SHA-256 of the whole ciphertext.
    #[serde(with = "serde_bytes")]
    pub digest: Vec<u8>,
    /// Its whole length (at most [`MAX_EXPORT`]).
    pub total: u64,
    /// Where this piece starts.
    pub offset: u64,
    /// The piece (at most [`MAX_EXPORT_CHUNK`] bytes).
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// Most security events one [`Request::SecurityEvents`] carries.
pub const MAX_SECURITY_EVENTS: usize = 64;
/// Longest detail of a security event, in bytes.
pub const MAX_SECURITY_DETAIL: usize = 256;

/// Something a device saw that matters to its owner's security: kept on the server in the
/// device's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityEvent {
    /// The device's own counter, one more per event, never reused (it survives restarts), so
    /// the server sees what was lost and what is sent twice.
    pub sequence: u64,
    /// When, by the device's clock (seconds since the epoch).
    pub at: u64,
    /// What kind of event.
    pub kind: SecurityEventKind,
    /// Details for a human, at most [`MAX_SECURITY_DETAIL`] bytes; never key material.
    pub detail: String,
}

/// The kinds of security event a device reports.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityEventKind {
    /// A signature or digest did not verify (a manifest, an image, a voucher, trust anchors).
    VerificationFailed,
    /// An offered firmware would have gone back to a lower sequence number.
    RollbackRefused,
    /// A trial boot failed its health check and the previous image runs again.
    RolledBack,
    /// A command was refused.
    CommandRefused,
    /// The platform reported tampering (an enclosure switch, a changed boot measurement).
    Tamper,
    /// The clock moved by more than the device allows (backwards, or far forwards).
    ClockJump,
    /// A kind this build does not know (from a newer agent).
    #[serde(other)]
    Other,
}

/// Largest firmware chunk served in one response.
pub const MAX_CHUNK: u32 = 128 * 1024;

/// Where a firmware update stands on a device.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirmwareState {
    /// Fetching the image.
    Downloading,
    /// Signature, vendor, class, sequence, size and digest all checked.
    Verified,
    /// Written to the inactive slot.
    Installed,
    /// Booted, passed its health check, committed.
    Healthy,
    /// Failed its health check; the previous image runs again.
    RolledBack,
    /// Refused or failed before installation (the reason says why).
    Failed,
}

impl FirmwareState {
    /// Whether nothing more will happen for this update.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            FirmwareState::Healthy | FirmwareState::RolledBack | FirmwareState::Failed
        )
    }
}

/// A device's report on a firmware update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareReport {
    /// SHA-256 of the image concerned.
    #[serde(with = "serde_bytes")]
    pub digest: Vec<u8>,
    /// Where the update stands.
    pub state: FirmwareState,
    /// Why, for `failed` and `rolled-back`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The refusal's code, for `failed` when the device refused the manifest or the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<crate::manifest::FirmwareRefusal>,
    /// Bytes of the image the device holds so far.
    #[serde(default)]
    pub bytes: u64,
}

impl FirmwareReport {
    /// Progress (or success) with image `digest`, holding `bytes` of it.
    pub fn progress(digest: &[u8], state: FirmwareState, bytes: u64) -> Self {
        FirmwareReport {
            digest: digest.to_vec(),
            state,
            reason: None,
            refusal: None,
            bytes,
        }
    }

    /// The manifest or the image of `digest` was refused.
    pub fn refused(digest: &[u8], error: &crate::manifest::ManifestError) -> Self {
        FirmwareReport {
            reason: Some(error.to_string()),
            refusal: Some(error.refusal()),
            ..FirmwareReport::progress(digest, FirmwareState::Failed, 0)
        }
    }

    /// The image failed its health check and the previous one runs again.
    pub fn rolled_back(digest: &[u8], reason: String, bytes: u64) -> Self {
        FirmwareReport {
            reason: Some(reason),
            ..FirmwareReport::progress(digest, FirmwareState::RolledBack, bytes)
        }
    }
}

/// Success or failure reported by a device, with a reason on failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Whether the step succeeded.
    pub ok: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Most hardware facts a hello may carry.
pub const MAX_HARDWARE_FACTS: usize = 16;
/// Longest name or value of a hardware fact, in bytes.
pub const MAX_HARDWARE_FACT_LEN: usize = 128;

/// What a device says about itself when it opens an operational session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Version of the agent software.
    pub agent_version: String,
    /// Version string of the firmware it runs.
    pub firmware_version: String,
    /// Sequence number of the firmware it runs (0 for the factory image).
    #[serde(default)]
    pub firmware_sequence: u64,
    /// Device class (model), as firmware manifests name it.
    #[serde(default)]
    pub class_id: String,
    /// What the platform says about the hardware (`arch`, `kernel`, the maker's own such as
    /// `board` or `ram-mb`): at most [`MAX_HARDWARE_FACTS`], each name and value at most
    /// [`MAX_HARDWARE_FACT_LEN`] bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hardware: BTreeMap<String, String>,
    /// The [`anchors_digest`] of the owner roots the device trusts, so that the server sends
    /// it the owner's current set ([`Command::TrustAnchors`]) when the two differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchors: Option<ByteBuf>,
}

/// Most owner roots a [`Command::TrustAnchors`] may carry: the old and the new one during a
/// rollover, with room to spare.
pub const MAX_TRUST_ANCHORS: usize = 4;

/// A digest of a set of owner roots (DER) that does not depend on their order: SHA-256 over
/// each root's SHA-256, sorted. Device and server compare sets by it.
pub fn anchors_digest<T: AsRef<[u8]>>(roots: &[T]) -> [u8; 32] {
    let mut each: Vec<ring::digest::Digest> = roots
        .iter()
        .map(|r| ring::digest::digest(&ring::digest::SHA256, r.as_ref()))
        .collect();
    each.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    let mut all = ring::digest::Context::new(&ring::digest::SHA256);
    for d in &each {
        all.update(d.as_ref());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(all.finish().as_ref());
    out
}

/// The onboarder's answer to a [`Request`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    /// A signed voucher (COSE_Sign1 of a [`crate::voucher::Voucher`]).
    Voucher(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The LDevID and everything that comes with it.
    Enrolled(Box<Enrollment>),
    /// The request was recorded.
    Ack,
    /// The operational session is open; the commands waiting for the device follow.
    Welcome(Welcome),
    /// A piece of a firmware image.
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The request was refused.
    Error(WireError),
}

/// The answer to [`Request::Hello`]: commands that were waiting for the device (for example a
/// rotation ordered while it was offline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Welcome {
    /// Commands to carry out, in order. Commands this build does not know (from a newer
    /// server) are dropped when decoding, so an older agent still gets the others.
    pub commands: Vec<Command>,
}

impl<'de> Deserialize<'de> for Welcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            commands: Vec<ciborium::Value>,
        }
        let raw = Raw::deserialize(d)?;
        Ok(Welcome {
            commands: raw
                .commands
                .into_iter()
                .filter_map(|v| v.deserialized::<Command>().ok())
                .collect(),
        })
    }
}

/// What a device receives when it enrolls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// The LDevID certificate, DER.
    #[serde(with = "serde_bytes")]
    pub certificate: Vec<u8>,
    /// The CA chain above it, issuing CA first, owner root last.
    pub chain: Vec<ByteBuf>,
    /// Credentials for the device's network.
    pub network: NetworkProfile,
    /// Operational settings.
    pub config: DeviceConfig,
}

/// Network credentials, by the operator's policy.
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkProfile {
    /// WPA2/WPA3-Personal with a passphrase unique to this device.
    Wifi {
        /// Network name.
        ssid: String,
        /// Per-device passphrase.
        psk: String,
    },
    /// WPA2/WPA3-Enterprise with EAP-TLS; the client credential is the LDevID.
    EapTls {
        /// Network name.
        ssid: String,
        /// EAP identity (the device serial).
        identity: String,
        /// CA certificates (DER) that authenticate the authentication server.
        ca_chain: Vec<ByteBuf>,
    },
}

impl std::fmt::Debug for NetworkProfile {
    /// Never prints the passphrase: profiles end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetworkProfile::Wifi { ssid, .. } => f
                .debug_struct("Wifi")
                .field("ssid", ssid)
                .field("psk", &"<redacted>")
                .finish(),
            NetworkProfile::EapTls { ssid, identity, .. } => f
                .debug_struct("EapTls")
                .field("ssid", ssid)
                .field("identity", identity)
                .finish_non_exhaustive(),
        }
    }
}

/// Operational settings given to a device at enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// DNS name in the onboarder's certificate, checked on operational sessions.
    pub server_name: String,
    /// How often an idle operational session shows it is alive, in seconds.
    pub heartbeat_secs: u32,
}

/// A command pushed by the onboarder on an operational session.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// Liveness check; answered by [`CommandReply::Pong`] with the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Re-key now: renew the LDevID with a fresh key. Answered by [`CommandReply::Accepted`];
    /// the renewal follows on the device's own streams.
    Rotate,
    /// Install the firmware described by this signed manifest (COSE_Sign1 of a
    /// [`crate::manifest::Manifest`]); fetch it from `url` over HTTPS when there is one, else
    /// with [`Request::FirmwareChunk`]. Answered by [`CommandReply::Accepted`].
    Update {
        /// The signed manifest.
        #[serde(with = "serde_bytes")]
        manifest: Vec<u8>,
        /// Where to download the image over HTTPS (RFC 9110 byte ranges resume it); the
        /// manifest, not the URL, makes the image trustworthy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    /// Wipe everything of this owner (data, keys, network credentials) and answer with a
    /// wipe attestation bound to `nonce`. Answered by [`CommandReply::Accepted`].
    Decommission {
        /// The server's fresh nonce, to be echoed in the attestation.
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
        /// The sanitization method asked for.
        method: crate::attestation::WipeMethod,
        /// Hand the application data back first: encrypted to this age X25519 recipient
        /// (`age1...`) and sent with [`Request::DataExport`], its digest then in the
        /// attestation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        export_to: Option<String>,
    },
    /// The owner roots (DER) the device is to trust from now on, in place of those it trusts
    /// now: an owner-root rollover adds the new root first, and removes the old one once
    /// nothing chains to it. The device takes it on an authenticated operational session only,
    /// and only a set that still authenticates the server it came from; at most
    /// [`MAX_TRUST_ANCHORS`]. Answered by [`CommandReply::Accepted`] once it is stored.
    TrustAnchors {
        /// Root certificates, DER.
        anchors: Vec<ByteBuf>,
    },
    /// Security updates for the device's class end on `ends_on` (seconds since the epoch; in
    /// the past once they have ended). The device records the notice, tells its user, and
    /// answers with [`Request::SupportNoticeRecorded`] once it is stored. Answered by
    /// [`CommandReply::Accepted`].
    SupportNotice {
        /// The device class concerned.
        class_id: String,
        /// When security updates end.
        ends_on: u64,
    },
}

/// A device's answer to a [`Command`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandReply {
    /// Answer to [`Command::Ping`].
    Pong {
        /// The nonce of the ping.
        nonce: u64,
    },
    /// The command was accepted and will be carried out.
    Accepted,
    /// The device could not carry out the command.
    Error(WireError),
}

/// A refusal on the wire: a stable code for programs and a message for people. The message
/// never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// What went wrong.
    pub code: ErrorCode,
    /// Details for a human.
    pub message: String,
}

/// Stable reasons for a refusal, shared by server and device.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The message could not be decoded or is not valid here.
    BadRequest,
    /// The message's protocol version is not spoken here.
    UnsupportedVersion,
    /// The message is larger than allowed.
    TooLarge,
    /// The peer's credential does not allow this request (for example an LDevID asking for a
    /// voucher).
    Unauthorized,
    /// No such device is expected.
    UnknownDevice,
    /// No voucher is available for the device.
    NoVoucher,
    /// The voucher on file has expired.
    VoucherExpired,
    /// A signature did not verify.
    BadSignature,
    /// The request is stale or was replayed from another session.
    StaleRequest,
    /// The registrar certificate the device saw is not this registrar's.
    ProximityMismatch,
    /// The request names another device than the authenticated one.
    WrongSerial,
    /// The device's lifecycle state does not allow this request now.
    WrongState,
    /// The CSR is malformed or its signature does not verify.
    CsrInvalid,
    /// The CSR does not meet the issuance policy (subject, key type, key reuse).
    CsrPolicy,
    /// The device is quarantined.
    Quarantined,
    /// The server could not complete the request; retry later.
    Unavailable,
    /// The command is not supported by this device.
    Unsupported,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for req in [
            Request::enroll(vec![1, 2, 3]),
            Request::Enroll {
                csr: vec![1, 2, 3],
                voucher_accepted: true,
            },
        ] {
            assert_eq!(decode::<Request>(&encode(&req), MAX_REQUEST).unwrap(), req);
        }
        let resp = Response::Enrolled(Box::new(Enrollment {
            certificate: vec![1],
            chain: vec![ByteBuf::from(vec![2])],
            network: NetworkProfile::Wifi {
                ssid: "iot".into(),
                psk: "secret-passphrase".into(),
            },
            config: DeviceConfig {
                server_name: "onboarder".into(),
                heartbeat_secs: 30,
            },
        }));
        assert_eq!(
            decode::<Response>(&encode(&resp), MAX_RESPONSE).unwrap(),
            resp
        );
        let err = Response::Error(WireError {
            code: ErrorCode::StaleRequest,
            message: "x".into(),
        });
        assert_eq!(
            decode::<Response>(&encode(&err), MAX_RESPONSE).unwrap(),
            err
        );
    }

    #[test]
    fn refuses_other_versions_garbage_and_oversize() {
        let bytes = crate::cbor::to_vec(&(2u16, Request::enroll(vec![])));
        assert_eq!(
            decode::<Request>(&bytes, MAX_REQUEST),
            Err(DecodeError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
        assert!(matches!(
            decode::<Request>(b"\x82\x01\xa1garbage", MAX_REQUEST),
            Err(DecodeError::Malformed(_))
        ));
        let big = encode(&Request::enroll(vec![0; MAX_REQUEST]));
        assert!(matches!(
            decode::<Request>(&big, MAX_REQUEST),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    /// An enrollment without the folded voucher status is byte for byte what agents sent
    /// before the field existed, so either side may be the older one.
    #[test]
    fn enroll_without_voucher_status_keeps_the_old_encoding() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        #[serde(rename_all = "kebab-case")]
        enum Before {
            Enroll {
                #[serde(with = "serde_bytes")]
                csr: Vec<u8>,
            },
        }
        let old = encode(&Before::Enroll { csr: vec![7; 3] });
        assert_eq!(encode(&Request::enroll(vec![7; 3])), old);
        assert_eq!(
            decode::<Request>(&old, MAX_REQUEST).unwrap(),
            Request::enroll(vec![7; 3])
        );
        let folded = encode(&Request::Enroll {
            csr: vec![7; 3],
            voucher_accepted: true,
        });
        assert_ne!(folded, old);
        // An older server reads the new request as a plain enrollment (unknown field ignored).
        assert_eq!(
            decode::<Before>(&folded, MAX_REQUEST).unwrap(),
            Before::Enroll { csr: vec![7; 3] }
        );
    }

    #[test]
    fn unknown_error_codes_from_newer_peers_decode() {
        let bytes = crate::cbor::to_vec(&(1u16, ("error", ("code-from-the-future", "m"))));
        // Shape differs from WireError's map: still a clean error, never a panic.
        assert!(decode::<Response>(&bytes, MAX_RESPONSE).is_err());
        let code: ErrorCode =
            crate::cbor::from_slice(&crate::cbor::to_vec("code-from-the-future"), 64).unwrap();
        assert_eq!(code, ErrorCode::Unknown);
    }

    #[test]
    fn refusal_codes_round_trip_and_unknown_ones_decode() {
        let error = crate::manifest::ManifestError::Rollback {
            offered: 3,
            installed: 7,
        };
        let report = FirmwareReport::refused(&[1; 32], &error);
        let back: FirmwareReport =
            crate::cbor::from_slice(&crate::cbor::to_vec(&report), 1024).unwrap();
        assert_eq!(back, report);
        assert_eq!(
            back.refusal,
            Some(crate::manifest::FirmwareRefusal::Rollback)
        );
        // A code from a newer agent is kept as unknown, the report still read.
        let newer: crate::manifest::FirmwareRefusal =
            crate::cbor::from_slice(&crate::cbor::to_vec(&"quantum-fault"), 64).unwrap();
        assert_eq!(newer, crate::manifest::FirmwareRefusal::Unknown);
    }

    #[test]
    fn unknown_commands_in_a_welcome_are_skipped() {
        let welcome = Welcome {
            commands: vec![Command::Rotate],
        };
        let mut value = ciborium::Value::serialized(&welcome).unwrap();
        if let ciborium::Value::Map(fields) = &mut value
            && let ciborium::Value::Array(commands) = &mut fields[0].1
        {
            commands.push(ciborium::Value::Map(vec![(
                ciborium::Value::Text("teleport".into()),
                ciborium::Value::Integer(1.into()),
            )]));
        }
        let decoded: Welcome = value.deserialized().unwrap();
        assert_eq!(decoded, welcome);
    }

    #[test]
    fn psk_never_appears_in_debug_output() {
        let p = NetworkProfile::Wifi {
            ssid: "iot".into(),
            psk: "hunter2-secret".into(),
        };
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
