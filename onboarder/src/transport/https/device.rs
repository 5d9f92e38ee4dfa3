//! Our own protocol over HTTPS, for devices whose network blocks UDP (QUIC): the same CBOR
//! requests and answers, the same service call, the same client-certificate checks.
//!
//! - `POST /.well-known/onboarder/request`: one request (`application/cbor`, the encoding of
//!   [`protocol::message::Request`]), answered with its response, a refusal included (200,
//!   the refusal is in the CBOR as over QUIC). The session binding is the connection's RFC
//!   9266 exporter value, so a device keeps one connection for the steps bound to it.
//! - `POST /.well-known/onboarder/commands`: the next command for the device, waiting up to
//!   [`POLL_WAIT`] (200 with the CBOR command, or 204); after a hello opened its session.
//! - `POST /.well-known/onboarder/reply`: the device's reply to the command it was handed
//!   (CBOR), 204.
//!
//! A hello over HTTPS opens the device's session exactly as over QUIC; the server pushes
//! commands to it the same way, and they wait for the device to ask.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use protocol::message::{self, CommandReply, MAX_REQUEST, Request};

use super::Caller;
use super::answer::{self, Refusal, device, media_type_is, rejected};
use crate::service::Service;
use crate::transport::sessions::{Carrier, POLL_WAIT, Sessions};

/// The media type of every body here.
const CBOR: &str = "application/cbor";

/// What the routes share.
#[derive(Clone)]
struct Shared {
    service: Arc<Service>,
    sessions: Arc<Sessions>,
}

/// The routes of our protocol over HTTPS.
pub fn router(service: Arc<Service>, sessions: Arc<Sessions>) -> Router {
    answer::limited(
        Router::new()
            .route("/.well-known/onboarder/request", post(request))
            .route("/.well-known/onboarder/commands", post(commands))
            .route("/.well-known/onboarder/reply", post(reply)),
        &service,
        MAX_REQUEST,
    )
    .with_state(Shared { service, sessions })
}

fn cbor(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, CBOR)], bytes).into_response()
}

/// The authenticated device and its CBOR body decoded as `T`, or the refusal (401, 415, 400).
fn decoded<'a, T: serde::de::DeserializeOwned>(
    service: &Service,
    caller: &'a Caller,
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> Result<(&'a crate::core::DevicePeer, T), Refusal> {
    let peer = device(service, caller)?;
    if !media_type_is(headers, CBOR) {
        let why = format!("the body must be {CBOR}");
        return Err(rejected(service, StatusCode::UNSUPPORTED_MEDIA_TYPE, &why));
    }
    message::decode(body, MAX_REQUEST)
        .map(|value| (peer, value))
        .map_err(|e| {
            rejected(
                service,
                StatusCode::BAD_REQUEST,
                &format!("not {what}: {e}"),
            )
        })
}

async fn request(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (peer, request) =
        match decoded::<Request>(&shared.service, &caller, &headers, &body, "a request") {
            Ok(decoded) => decoded,
            Err(refused) => return refused.into_response(),
        };
    let handled = shared
        .sessions
        .handle(
            &shared.service,
            peer,
            &caller.binding,
            Carrier::Pull,
            request,
            "https",
        )
        .await;
    cbor(message::encode(&handled.response))
}

async fn commands(State(shared): State<Shared>, Extension(caller): Extension<Caller>) -> Response {
    let peer = match device(&shared.service, &caller) {
        Ok(peer) => peer,
        Err(refused) => return refused.into_response(),
    };
    let Some(link) = shared.sessions.pull(&peer.id) else {
        return answer::refusal(
            StatusCode::CONFLICT,
            "no session over HTTPS: say hello first",
        )
        .into_response();
    };
    match link.next(POLL_WAIT).await {
        Some(command) => cbor(message::encode(&command)),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn reply(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (peer, reply) =
        match decoded::<CommandReply>(&shared.service, &caller, &headers, &body, "a reply") {
            Ok(decoded) => decoded,
            Err(refused) => return refused.into_response(),
        };
    match shared.sessions.pull(&peer.id) {
        Some(link) if link.reply(reply) => StatusCode::NO_CONTENT.into_response(),
        _ => answer::refusal(StatusCode::CONFLICT, "no command is waiting for a reply")
            .into_response(),
    }
}
