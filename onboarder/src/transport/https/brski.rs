//! BRSKI (RFC 8995) under `/.well-known/brski/`, for pledges we did not write:
//!
//! - `POST requestvoucher` (5.2): the pledge's CMS-signed JSON voucher request
//!   (`application/voucher-cms+json`, binary DER), with its IDevID as TLS client certificate;
//!   the answer is the voucher, CMS-signed by the maker's MASA (imported, or asked online);
//! - `POST voucher_status` (5.7): the pledge's verdict on its voucher, with its IDevID;
//! - `POST enrollstatus` (5.9.4): whether it stored its certificate, with its IDevID or new
//!   LDevID; success makes the device active, as our agent's confirmation does over QUIC.
//!
//! The status reports take `application/json`: `{"version": 1, "status": true|false,
//! "reason": "...", "reason-context": {...}}`. Anything else is refused (415, or 400 with the
//! reason). `requestauditlog` is the MASA's (RFC 8995 5.8), served by `factory masa serve`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use certs::brski::{Encoding, VOUCHER_CMS};
use protocol::message::{Request, Response as Answer, Status};
use serde::Deserialize;

use super::Caller;
use super::answer::{self, device, media_type_is, not_expected, rejected};
use crate::service::Service;

/// Largest status report or voucher request.
pub const MAX_BODY: usize = 16 * 1024;

/// The BRSKI routes.
pub fn router(service: Arc<Service>) -> Router {
    answer::limited(
        Router::new()
            .route("/.well-known/brski/requestvoucher", post(requestvoucher))
            .route("/.well-known/brski/voucher_status", post(voucher_status))
            .route("/.well-known/brski/enrollstatus", post(enrollstatus)),
        &service,
        MAX_BODY,
    )
    .with_state(service)
}

/// The status a report body gives, or why it is not one.
pub(crate) fn status_of(body: &[u8]) -> Result<Status, String> {
    let report: Report =
        serde_json::from_slice(body).map_err(|e| format!("not a status report: {e}"))?;
    if report.version != serde_json::json!(1) && report.version != serde_json::json!("1") {
        return Err("status report version 1 only".into());
    }
    // The reason and its context go to the audit log as the device gave them (the core
    // shortens them).
    let reason = match (report.reason, report.reason_context) {
        (Some(r), Some(c)) => Some(format!("{r} ({c})")),
        (r, c) => r.or(c.map(|c| c.to_string())),
    };
    Ok(Status {
        ok: report.status,
        reason,
    })
}

/// A status report (RFC 8995 5.7 and 5.9.4).
#[derive(Debug, Deserialize)]
struct Report {
    version: serde_json::Value,
    status: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default, rename = "reason-context")]
    reason_context: Option<serde_json::Value>,
}

/// RFC 8995 5.2: a pledge's voucher request, CMS-signed JSON with its IDevID (binary DER, as
/// `openssl cms -sign -outform DER` makes it), answered with the voucher in the same encoding:
/// the one the owner imported for it, or a nonced one from its maker's MASA.
async fn requestvoucher(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let peer = match device(&service, &caller) {
        Ok(peer) => peer,
        Err(refused) => return refused.into_response(),
    };
    if !media_type_is(&headers, VOUCHER_CMS) {
        let why = format!("the body must be {VOUCHER_CMS}");
        return rejected(&service, StatusCode::UNSUPPORTED_MEDIA_TYPE, &why).into_response();
    }
    let request = Request::VoucherRequest(body.to_vec());
    match service
        .handle(peer, &caller.binding, request, "https")
        .await
        .response
    {
        Answer::Voucher(voucher) => (
            [(
                header::CONTENT_TYPE,
                Encoding::of(&voucher).voucher_media_type(),
            )],
            voucher,
        )
            .into_response(),
        other => not_expected(other).into_response(),
    }
}

async fn voucher_status(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    report(&service, &caller, &headers, &body, Request::VoucherStatus).await
}

async fn enrollstatus(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    report(&service, &caller, &headers, &body, Request::EnrollStatus).await
}

async fn report(
    service: &Service,
    caller: &Caller,
    headers: &HeaderMap,
    body: &[u8],
    request: impl FnOnce(Status) -> Request,
) -> Response {
    let peer = match device(service, caller) {
        Ok(peer) => peer,
        Err(refused) => return refused.into_response(),
    };
    if !media_type_is(headers, "application/json") {
        return rejected(
            service,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be application/json",
        )
        .into_response();
    }
    let status = match status_of(body) {
        Ok(status) => status,
        Err(why) => return rejected(service, StatusCode::BAD_REQUEST, &why).into_response(),
    };
    match service
        .handle(peer, &caller.binding, request(status), "https")
        .await
        .response
    {
        Answer::Ack => StatusCode::OK.into_response(),
        other => not_expected(other).into_response(),
    }
}
