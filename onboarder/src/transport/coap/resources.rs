//! The CoAP resources (RFC 9148's EST-coaps and constrained BRSKI): each authenticates (the
//! DTLS peer), decodes, calls the service and encodes; no lifecycle rule lives here. Bodies are
//! binary DER or COSE as RFC 9148 says, told apart by their Content-Format.
//!
//! ```text
//! GET  /.well-known/core         the resources (RFC 6690 link format)
//! GET  /.well-known/est/crts     the CA certificates (281)
//! POST /.well-known/est/sen      a PKCS#10 CSR (286) with the IDevID -> the LDevID (281 or 287)
//! POST /.well-known/est/sren     the same with the LDevID, for a fresh key
//! POST /.well-known/brski/rv     a COSE voucher request (836) -> the voucher (836)
//! POST /.well-known/brski/vs     voucher status (CBOR, our Status)
//! POST /.well-known/brski/es     enroll status (CBOR, our Status)
//! POST /.well-known/onboarder/request   our protocol: a CBOR request, the CBOR answer (a
//!                                       hello opens the device's session)
//! GET  /.well-known/onboarder/commands  observed (RFC 7641): each pushed command is a
//!                                       notification (the listener's, `super`)
//! POST /.well-known/onboarder/reply     the device's CBOR reply to the last command
//! GET  /.well-known/onboarder/fw/HEX    a firmware image offered to the device, by Block2
//!                                       from any block (a download resumes)
//! POST /.well-known/onboarder/wipe      the signed wipe attestation (18, by Block1)
//! ```
//!
//! A command's manifest comes in its notification (the rest of a notification larger than a
//! block by Block2 on the command resource, RFC 7959 3.4).

use coap_lite::{RequestType, ResponseType};
use protocol::coap::{
    BLOCK, CBOR, COMMANDS, COSE_SIGN1, FIRMWARE, LINK_FORMAT, PKCS7_CERTS, PKCS10, PKIX_CERT,
    REPLY, REQUEST, VOUCHER_COSE, WIPE,
};
use protocol::message::{
    self, CommandReply, ErrorCode, Request as DeviceRequest, Response, Status,
};

use super::dtls::PeerIdentity;
use super::message::{Answer, Request};
use crate::core::{Channel, DevicePeer};
use crate::service::Service;
use crate::transport::sessions::{Carrier, Sessions};

/// application/octet-stream: a firmware image.
const OCTET_STREAM: u16 = 42;

/// What `/.well-known/core` lists.
const CORE: &str = "</.well-known/est/crts>;rt=\"ace.est.crts\";ct=\"281 287\",\
</.well-known/est/sen>;rt=\"ace.est.sen\";ct=\"281 287\",\
</.well-known/est/sren>;rt=\"ace.est.sren\";ct=\"281 287\",\
</.well-known/brski/rv>;rt=\"brski.rv\";ct=836,\
</.well-known/brski/vs>;rt=\"brski.vs\";ct=60,\
</.well-known/brski/es>;rt=\"brski.es\";ct=60,\
</.well-known/onboarder/request>;ct=60,\
</.well-known/onboarder/commands>;ct=60;obs,\
</.well-known/onboarder/reply>;ct=60,\
</.well-known/onboarder/wipe>;ct=18";

/// Answers `request` from `peer`.
pub async fn answer(
    service: &Service,
    sessions: &Sessions,
    peer: &PeerIdentity,
    request: Request,
) -> Answer {
    use RequestType::{Get, Post};
    match (request.method, request.path.as_str()) {
        (Post, REQUEST) => door(service, sessions, peer, &request).await,
        (Get, path) if path.starts_with(FIRMWARE) => firmware(service, peer, &request).await,
        (Post, WIPE) => wipe(service, peer, &request).await,
        (Post, REPLY) => reply(service, sessions, peer, &request),
        (Get, "/.well-known/core") => {
            Answer::content(ResponseType::Content, LINK_FORMAT, CORE.as_bytes().to_vec())
        }
        (Get, "/.well-known/est/crts") => crts(service),
        (Post, "/.well-known/est/sen") => {
            enroll(service, peer, &request, DeviceRequest::enroll).await
        }
        (Post, "/.well-known/est/sren") => {
            enroll(service, peer, &request, |csr| DeviceRequest::Reenroll {
                csr,
            })
            .await
        }
        (Post, "/.well-known/brski/rv") => {
            if request.content_format != Some(VOUCHER_COSE) {
                return unsupported("a COSE voucher request (836)");
            }
            let asked = DeviceRequest::VoucherRequest(request.body);
            match call(service, peer, asked).await {
                Ok(Response::Voucher(v)) => Answer::content(ResponseType::Changed, VOUCHER_COSE, v),
                Ok(other) => unexpected(&other),
                Err(refused) => refused,
            }
        }
        (Post, "/.well-known/brski/vs") => {
            report(service, peer, &request, DeviceRequest::VoucherStatus).await
        }
        (Post, "/.well-known/brski/es") => {
            report(service, peer, &request, DeviceRequest::EnrollStatus).await
        }
        (
            _,
            "/.well-known/core"
            | "/.well-known/est/crts"
            | "/.well-known/est/sen"
            | "/.well-known/est/sren"
            | "/.well-known/brski/rv"
            | "/.well-known/brski/vs"
            | "/.well-known/brski/es"
            | REQUEST
            | COMMANDS
            | REPLY
            | WIPE,
        ) => Answer::error(ResponseType::MethodNotAllowed, "method not allowed here"),
        _ => Answer::error(ResponseType::NotFound, "no such resource"),
    }
}

/// Our protocol: the request as over QUIC, the answer as the service gives it (a refusal is a
/// CBOR answer too, as on QUIC).
async fn door(
    service: &Service,
    sessions: &Sessions,
    peer: &PeerIdentity,
    request: &Request,
) -> Answer {
    if request.content_format != Some(CBOR) {
        return unsupported("a CBOR request (60)");
    }
    let decoded: DeviceRequest = match message::decode(&request.body, message::MAX_REQUEST) {
        Ok(r) => r,
        Err(e) => return Answer::error(ResponseType::BadRequest, &format!("request: {e}")),
    };
    let device = match device(service, peer) {
        Ok(d) => d,
        Err(refused) => return refused,
    };
    let handled = sessions
        .handle(
            service,
            &device,
            &peer.binding,
            Carrier::Pull,
            decoded,
            "coap",
        )
        .await;
    Answer::content(
        ResponseType::Changed,
        CBOR,
        message::encode(&handled.response),
    )
}

/// The device's reply to the command it was last given.
fn reply(service: &Service, sessions: &Sessions, peer: &PeerIdentity, request: &Request) -> Answer {
    if request.content_format != Some(CBOR) {
        return unsupported("a CBOR reply (60)");
    }
    let decoded: CommandReply = match message::decode(&request.body, message::MAX_REQUEST) {
        Ok(r) => r,
        Err(e) => return Answer::error(ResponseType::BadRequest, &format!("reply: {e}")),
    };
    let device = match device(service, peer) {
        Ok(d) => d,
        Err(refused) => return refused,
    };
    match sessions.pull(&device.id) {
        Some(link) if link.reply(decoded) => Answer::empty(ResponseType::Changed),
        _ => Answer::error(ResponseType::Forbidden, "no command is waiting for a reply"),
    }
}

/// The device the DTLS client certificate names, over CoAP.
pub fn device(service: &Service, peer: &PeerIdentity) -> Result<DevicePeer, Answer> {
    service
        .identify(&peer.chain)
        .map(|d| d.over(Channel::Coap))
        .map_err(|e| Answer::error(ResponseType::Unauthorized, &e.to_string()))
}

/// The wire code a transport refusal counts as in the metrics.
pub fn error_code(code: ResponseType) -> ErrorCode {
    match code {
        ResponseType::Unauthorized => ErrorCode::Unauthorized,
        ResponseType::RequestEntityTooLarge => ErrorCode::TooLarge,
        _ => ErrorCode::BadRequest,
    }
}

fn unsupported(what: &str) -> Answer {
    Answer::error(
        ResponseType::UnsupportedContentFormat,
        &format!("the body must be {what}"),
    )
}

fn crts(service: &Service) -> Answer {
    Answer::content(
        ResponseType::Content,
        PKCS7_CERTS,
        certs::pkcs7::certs_only(&service.registrar().ca_certificates()),
    )
}

async fn enroll(
    service: &Service,
    peer: &PeerIdentity,
    request: &Request,
    make: impl FnOnce(Vec<u8>) -> DeviceRequest,
) -> Answer {
    if request.content_format != Some(PKCS10) {
        return unsupported("a DER PKCS#10 CSR (286)");
    }
    if request.body.is_empty() {
        return Answer::error(ResponseType::BadRequest, "no CSR");
    }
    match call(service, peer, make(request.body.clone())).await {
        Ok(Response::Enrolled(enrollment)) if request.accept == Some(PKIX_CERT) => {
            Answer::content(ResponseType::Changed, PKIX_CERT, enrollment.certificate)
        }
        Ok(Response::Enrolled(enrollment)) => Answer::content(
            ResponseType::Changed,
            PKCS7_CERTS,
            certs::pkcs7::certs_only(&[&enrollment.certificate]),
        ),
        Ok(other) => unexpected(&other),
        Err(refused) => refused,
    }
}

/// One block of a firmware image offered to the device (RFC 7959 2.4): any block may be
/// asked for first, so a download resumes where it stopped. The service serves the bytes
/// (and checks the offer); one byte more than a block tells whether more follow.
async fn firmware(service: &Service, peer: &PeerIdentity, request: &Request) -> Answer {
    let digest = match hex::decode(&request.path[FIRMWARE.len()..]) {
        Ok(d) if d.len() == 32 => d,
        _ => return Answer::error(ResponseType::NotFound, "no such image"),
    };
    let (num, size) = request.block2.unwrap_or((0, BLOCK));
    let asked = DeviceRequest::FirmwareChunk {
        digest,
        offset: u64::from(num) * size as u64,
        length: size as u32 + 1,
    };
    match call(service, peer, asked).await {
        Ok(Response::Chunk(mut bytes)) => {
            let more = bytes.len() > size;
            bytes.truncate(size);
            Answer {
                block: Some((num, more)),
                ..Answer::content(ResponseType::Content, OCTET_STREAM, bytes)
            }
        }
        Ok(other) => unexpected(&other),
        Err(refused) => refused,
    }
}

/// The device's signed wipe attestation (COSE_Sign1, larger than a block: Block1).
async fn wipe(service: &Service, peer: &PeerIdentity, request: &Request) -> Answer {
    if request.content_format != Some(COSE_SIGN1) {
        return unsupported("a COSE_Sign1 attestation (18)");
    }
    match call(
        service,
        peer,
        DeviceRequest::WipeAttestation(request.body.clone()),
    )
    .await
    {
        Ok(Response::Ack) => Answer::empty(ResponseType::Changed),
        Ok(other) => unexpected(&other),
        Err(refused) => refused,
    }
}

async fn report(
    service: &Service,
    peer: &PeerIdentity,
    request: &Request,
    make: impl FnOnce(Status) -> DeviceRequest,
) -> Answer {
    if request.content_format != Some(CBOR) {
        return unsupported("a CBOR status (60)");
    }
    let status: Status = match protocol::cbor::from_slice(&request.body, 4096) {
        Ok(s) => s,
        Err(e) => return Answer::error(ResponseType::BadRequest, &format!("status: {e}")),
    };
    match call(service, peer, make(status)).await {
        Ok(Response::Ack) => Answer::empty(ResponseType::Changed),
        Ok(other) => unexpected(&other),
        Err(refused) => refused,
    }
}

/// The service's answer to `request` from the device `peer` authenticated as, or its refusal
/// as a CoAP error.
async fn call(
    service: &Service,
    peer: &PeerIdentity,
    request: DeviceRequest,
) -> Result<Response, Answer> {
    let device = device(service, peer)?;
    match service
        .handle(&device, &peer.binding, request, "coap")
        .await
        .response
    {
        Response::Error(e) => Err(refusal(e.code, &e.message)),
        answer => Ok(answer),
    }
}

/// A refusal of the core as the CoAP code that says the same.
fn refusal(code: ErrorCode, message: &str) -> Answer {
    let coap = match code {
        ErrorCode::Unauthorized | ErrorCode::ProximityMismatch => ResponseType::Unauthorized,
        ErrorCode::Quarantined | ErrorCode::WrongState => ResponseType::Forbidden,
        ErrorCode::UnknownDevice | ErrorCode::NoVoucher => ResponseType::NotFound,
        ErrorCode::TooLarge => ResponseType::RequestEntityTooLarge,
        ErrorCode::Unavailable => {
            return Answer {
                max_age: Some(5),
                refused_here: false,
                ..Answer::error(ResponseType::ServiceUnavailable, message)
            };
        }
        ErrorCode::UnsupportedVersion | ErrorCode::Unsupported => ResponseType::NotImplemented,
        _ => ResponseType::BadRequest,
    };
    Answer {
        refused_here: false,
        ..Answer::error(coap, message)
    }
}

fn unexpected(_: &Response) -> Answer {
    Answer::error(
        ResponseType::InternalServerError,
        "the service answered something this resource does not carry",
    )
}
