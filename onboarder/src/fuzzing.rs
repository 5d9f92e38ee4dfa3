//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, never in a product build):
//! the decoders that take outside bytes behind a private path, each called as its edge calls
//! it, with the edge's size limit. The decoders the protocol and certs crates export are
//! fuzzed directly.

use std::net::SocketAddr;

use coap_lite::ResponseType;

use crate::transport::coap::{cookie, message};
use crate::transport::https::{brski, est};

/// An EST enrollment body (RFC 7030 4.2.1): base64 of a PKCS#10 CSR, line breaks anywhere.
pub fn est_body(body: &[u8]) {
    if body.len() > est::MAX_BODY {
        return;
    }
    if let Ok(der) = est::decode_base64(body) {
        let _ = certs::csr::parse_csr(&der);
    }
}

/// A BRSKI status report body (RFC 8995 5.7, 5.9.4).
pub fn brski_status(body: &[u8]) {
    if body.len() <= brski::MAX_BODY {
        let _ = brski::status_of(body);
    }
}

/// A DTLS datagram as the CoAPS listener reads it before any session: a ClientHello's cookie
/// is checked, and a HelloVerifyRequest made for it.
pub fn dtls_datagram(datagram: &[u8]) {
    let Some(hello) = cookie::client_hello(datagram) else {
        return;
    };
    let Ok(cookies) = cookie::Cookies::new() else {
        return;
    };
    let peer = SocketAddr::from(([192, 0, 2, 1], 5684));
    let _ = cookies.valid(peer, &hello);
    let reply = cookies.hello_verify_request(peer, &hello);
    assert!(
        cookie::client_hello(&reply).is_none(),
        "a reply read as a hello"
    );
}

/// The CoAP messages of one session in order, as the listener's message layer takes them:
/// deduplication, Block1 reassembly, Block2 downloads (every request is answered with a body
/// of several blocks, so the next requests can ask for its blocks).
pub fn coap_session(messages: &[&[u8]]) {
    let mut layer = message::Messages::default();
    for m in messages {
        match layer.incoming(m) {
            message::Incoming::Request(request, key) => {
                assert!(request.body.len() <= message::MAX_BODY, "an oversized body");
                let body = vec![0x5a; 3 * protocol::coap::BLOCK + 7];
                let _ = layer.answer(
                    &key,
                    &message::Answer::content(ResponseType::Content, 60, body),
                );
            }
            message::Incoming::Nothing
            | message::Incoming::Reply(_)
            | message::Incoming::Refused(..) => {}
        }
    }
}

/// The admin API's bodies, chosen by `kind`: each JSON body as axum's extractor decodes it,
/// then the checks its handler makes before anything else; the firmware upload's CBOR; a VEX
/// document.
pub fn admin_body(kind: u8, body: &[u8]) {
    use crate::operator::api;
    fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
        serde_json::from_slice(body).ok()
    }
    match kind % 13 {
        0 => {
            if let Some(spec) = json::<crate::service::CampaignSpec>(body) {
                let devices: Vec<u32> = (0..100).collect();
                let _ = crate::core::campaign::plan(&devices, &spec.waves);
            }
        }
        1 => drop(json::<api::DecommissionRequest>(body)),
        2 => drop(json::<api::QuarantineRequest>(body)),
        3 => drop(json::<api::RevokeRequest>(body)),
        4 => drop(json::<api::RotateRequest>(body)),
        5 => drop(json::<api::RolloverRequest>(body)),
        6 => drop(json::<api::FirmwareKeyRequest>(body)),
        7 => drop(json::<api::SupportRequest>(body)),
        8 => {
            if let Some(query) = json::<crate::core::query::DeviceQuery>(body) {
                let _ = query.validate();
                let _ = query.terms();
            }
        }
        9 => {
            if let Some(labels) = json::<crate::core::query::Labels>(body) {
                let _ = labels.validate();
            }
        }
        10 => drop(json::<crate::core::label::LabelSettings>(body)),
        11 => drop(protocol::cbor::from_slice::<Vec<serde_bytes::ByteBuf>>(
            body,
            body.len(),
        )),
        _ => drop(crate::core::vex::parse(body, &[])),
    }
}
