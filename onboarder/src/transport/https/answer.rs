//! How the HTTPS resources answer: refusals with their HTTP status (and counted when this
//! transport makes them), the authenticated device or 401, and the service's wire answers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use protocol::message::{ErrorCode, Response as Answer};

use super::Caller;
use crate::core::DevicePeer;
use crate::service::Service;

/// A refusal: its status and why, for people.
pub(super) struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

/// A refusal made elsewhere (by the core, already counted), or one not worth counting.
pub(super) fn refusal(status: StatusCode, why: &str) -> Refusal {
    Refusal(status, why.to_string())
}

/// A refusal this transport makes itself, counted with the service's refusals so
/// `/v1/stats` shows malformed traffic too.
pub(super) fn rejected(service: &Service, status: StatusCode, why: &str) -> Refusal {
    service.metrics().refused(match status {
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
        _ => ErrorCode::BadRequest,
    });
    refusal(status, why)
}

/// `router` with bodies limited to `max` bytes: refused before reading when announced larger
/// ([`announced_size`]), cut at `max` when sent without a length.
pub(super) fn limited<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    service: &Arc<Service>,
    max: usize,
) -> axum::Router<S> {
    router
        .layer(axum::extract::DefaultBodyLimit::max(max))
        .layer(axum::middleware::from_fn_with_state(
            (service.clone(), max),
            announced_size,
        ))
}

/// Refuses (413, counted) a request whose announced body is longer than `limit` before any of
/// it is read: a client that asked for `100 Continue` hears the verdict instead of sending a
/// body the server would drop half way (which it would see as a reset). A body sent without a
/// length is cut at the same limit by the routes' `DefaultBodyLimit`.
pub(super) async fn announced_size(
    State((service, limit)): State<(Arc<Service>, usize)>,
    request: Request,
    next: Next,
) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        let why = format!("the body is larger than {limit} bytes");
        return rejected(&service, StatusCode::PAYLOAD_TOO_LARGE, &why).into_response();
    }
    next.run(request).await
}

/// The device the connection's client certificate names, or 401.
pub(super) fn device<'a>(service: &Service, caller: &'a Caller) -> Result<&'a DevicePeer, Refusal> {
    caller.peer.as_deref().ok_or_else(|| {
        rejected(
            service,
            StatusCode::UNAUTHORIZED,
            "a client certificate (the device's IDevID or LDevID) is required",
        )
    })
}

/// A wire answer that is not the one expected: the core's refusal with its HTTP status, or
/// (never, short of a bug) another answer.
pub(super) fn not_expected(answer: Answer) -> Refusal {
    match answer {
        Answer::Error(e) => refusal(status_of(e.code), &e.message),
        other => refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("unexpected answer {other:?}"),
        ),
    }
}

/// The HTTP status of a refusal of the core.
pub(super) fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode as C;
    match code {
        C::Unauthorized | C::UnknownDevice | C::Quarantined | C::NoVoucher | C::VoucherExpired => {
            StatusCode::FORBIDDEN
        }
        C::WrongState => StatusCode::CONFLICT,
        C::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Whether the request's Content-Type is `expected` (parameters aside).
pub(super) fn media_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn media_types_are_compared_without_parameters() {
        let mut headers = HeaderMap::new();
        assert!(!media_type_is(&headers, "application/pkcs10"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/PKCS10; charset=x"),
        );
        assert!(media_type_is(&headers, "application/pkcs10"));
    }
}
