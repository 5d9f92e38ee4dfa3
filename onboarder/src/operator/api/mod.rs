//! The admin API: HTTP on loopback, bearer-token authenticated, JSON out. Routes by topic:
//! `devices` (anchors, vouchers, devices and orders about them, the audit log), `fleet`
//! (rotations, the CA rollover, CRLs, counters) and `firmware` (keys, releases, campaigns).
//!
//! Every error is one JSON problem (RFC 9457, `application/problem+json`): `type`, `title`,
//! `status` and `detail`, also for the framework's own refusals (a body that is not JSON, an
//! unknown route).
//!
//! A device is named `MAKER/SERIAL` (the maker id or the manufacturer's name; `/` written
//! `%2F` in a path), or by its serial alone when only one manufacturer has a device with it.
//!
//! ```text
//! GET  /v1/health                 liveness (no token needed)
//! GET  /v1/anchors                manufacturer trust anchors
//! POST /v1/anchors                import anchors {"pem", "masa_pem"?, "name"?}
//! POST /v1/vouchers               import a voucher bundle (body: CBOR, see factory voucher)
//! GET  /v1/devices?after=&limit=  devices in id order (maker, serial)
//! GET  /v1/devices/{device}       one device
//! GET  /v1/search?serial=&state=&class=&firmware=&tags=a,b&attrs=k=v&expires_before=&query=&after=&limit=
//!                                 devices matching every filter, from the device index:
//!                                 {"devices", "next" (the next page's `after`), "scanned"}
//! POST /v1/devices/{device}/labels {"add_tags", "remove_tags", "set": {k: v}, "unset"}
//! GET  /v1/queries                saved queries; PUT /v1/queries/{name} (a query) saves one
//! POST /v1/devices/{device}/revoke {"reason": "key-compromise"}: revoke and quarantine
//! POST /v1/devices/{device}/quarantine {"reason": "..."}: refuse it, keep its certificates
//! POST /v1/devices/{device}/reset-onboarding {"reason": "..."}: back to expected, pin dropped
//! POST /v1/decommissions          {"devices": [..], "method": "clear"|"purge-cryptographic-erase"}
//! POST /v1/devices/{device}/decommission/force {"reason": "..."}: no attestation
//! GET  /v1/devices/{device}/sanitization       certificate of sanitization (JSON)
//! GET  /v1/devices/{device}/sanitization.html  the same, printable
//! POST /v1/rotations              {"devices": [..]} or {"all": true}, optional "rate"
//! GET  /v1/rotations?since=T      progress of the rotations ordered since T
//! POST /v1/ca/rollover            new issuing CA generation, every device re-keys
//! POST /v1/ca/root-rollover       new owner root: sent to devices, CA moved, old root retired
//! GET  /v1/ca/roots               the owner roots and the rollover under way, with what holds it
//! GET  /v1/crls                   the CRLs last published
//! GET  /v1/stats                  devices per state, live sessions, refusals and shed load
//! GET  /metrics                   the same and more in Prometheus's text format (latencies,
//!                                store commits, CRL age, campaign progress)
//! GET  /v1/firmware/keys          firmware-signing keys; POST {"vendor", "pem"} imports one
//! GET  /v1/firmware/releases      releases; POST (CBOR [manifest, image]) uploads one
//! GET  /v1/campaigns              campaigns; POST (CampaignSpec) creates one
//! GET  /v1/campaigns/{id}         status per wave (and per device with ?devices=true)
//! POST /v1/campaigns/{id}/{order} start, pause, resume or abort
//! GET  /v1/audit?from=&limit=     audit entries from `from`, or the newest `limit`
//! GET  /v1/audit/verify           verify the audit hash chain
//! GET  /crl/issuing-ca-{n}.crl    CRL of issuing CA generation n, DER (no token needed)
//! ```

mod devices;
mod firmware;
mod fleet;
mod metrics;

pub(crate) use devices::run_search;
pub use devices::{
    DecommissionRequest, QuarantineRequest, RevokeRequest, SearchParams, SearchView,
};
pub use firmware::{CampaignQuery, FirmwareKeyRequest, ReleaseView};
pub use fleet::{RolloverRequest, RotateRequest, Since, Stats};

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::OperatorError;
use super::views::DeviceView;
use crate::control::Control;

/// Most devices or audit entries in one page.
pub const MAX_PAGE: usize = 10_000;

#[derive(Clone)]
struct Api {
    control: Arc<Control>,
    token: Arc<String>,
}

/// Serves the admin API on `listener` until `shutdown` completes, with the RADIUS endpoints
/// (`crate::radius::api`) when FreeRADIUS has a token.
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Arc<Control>,
    token: String,
    radius_token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut app = router(control.clone(), token);
    if let Some(radius_token) = radius_token {
        app = app.merge(crate::radius::api::router(control, radius_token));
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The API's routes.
pub fn router(control: Arc<Control>, token: String) -> Router {
    let console = super::console::router(control.clone(), &token);
    let api = Api {
        control,
        token: Arc::new(token),
    };
    let authed = Router::new()
        .route(
            "/v1/anchors",
            get(devices::list_anchors).post(devices::import_anchor),
        )
        .route(
            "/v1/vouchers",
            axum::routing::post(devices::import_vouchers),
        )
        .route("/v1/devices", get(devices::list_devices))
        .route("/v1/search", get(devices::search))
        .route("/v1/queries", get(devices::list_queries))
        .route(
            "/v1/queries/{name}",
            axum::routing::put(devices::save_query),
        )
        .route(
            "/v1/devices/{device}/labels",
            axum::routing::post(devices::label),
        )
        .route("/v1/devices/{device}", get(devices::show_device))
        .route(
            "/v1/devices/{device}/revoke",
            axum::routing::post(devices::revoke),
        )
        .route(
            "/v1/devices/{device}/quarantine",
            axum::routing::post(devices::quarantine),
        )
        .route(
            "/v1/devices/{device}/reset-onboarding",
            axum::routing::post(devices::reset_onboarding),
        )
        .route(
            "/v1/decommissions",
            axum::routing::post(devices::decommission),
        )
        .route(
            "/v1/devices/{device}/decommission/force",
            axum::routing::post(devices::force_decommission),
        )
        .route(
            "/v1/devices/{device}/sanitization",
            get(devices::sanitization),
        )
        .route(
            "/v1/devices/{device}/sanitization.html",
            get(devices::sanitization_html),
        )
        .route(
            "/v1/rotations",
            get(fleet::rotation_status).post(fleet::rotate),
        )
        .route("/v1/ca/rollover", axum::routing::post(fleet::rollover))
        .route(
            "/v1/ca/root-rollover",
            axum::routing::post(fleet::root_rollover),
        )
        .route("/v1/ca/roots", get(fleet::roots))
        .route("/v1/crls", get(fleet::list_crls))
        .route("/v1/stats", get(fleet::stats))
        .route("/metrics", get(metrics::metrics))
        .route(
            "/v1/firmware/keys",
            get(firmware::list_firmware_keys).post(firmware::import_firmware_key),
        )
        .route(
            "/v1/firmware/releases",
            get(firmware::list_releases).post(firmware::upload_release),
        )
        .route(
            "/v1/campaigns",
            get(firmware::list_campaigns).post(firmware::create_campaign),
        )
        .route("/v1/campaigns/{id}", get(firmware::campaign_status))
        .route(
            "/v1/campaigns/{id}/{order}",
            axum::routing::post(firmware::order_campaign),
        )
        .route("/v1/audit", get(devices::list_audit))
        .route("/v1/audit/verify", get(devices::verify_audit))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate));
    Router::new()
        .route(
            "/v1/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/crl/{file}", get(fleet::crl))
        .merge(authed)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".into()) })
        .layer(axum::middleware::map_response(as_problem))
        .layer(DefaultBodyLimit::max(
            (crate::store::images::MAX_IMAGE as usize).max(protocol::voucher::MAX_BUNDLE) + 65536,
        ))
        .with_state(api)
        .merge(console)
}

async fn authenticate(
    State(api): State<Api>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    // The scheme is case-insensitive (RFC 9110 11.1).
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or_default();
    if constant_time_eq(presented.as_bytes(), api.token.as_bytes()) {
        next.run(req).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        )
    }
}

/// The view of a device, with the CA generations of its certificates.
fn view(api: &Api, record: &crate::core::DeviceRecord) -> DeviceView {
    DeviceView::new(record, &api.control.service.registrar())
}

/// Compares a presented token with ours in time that depends on neither: both are hashed to
/// 32 bytes first (so their lengths do not show), and the digests compared without an early
/// exit.
pub(crate) fn constant_time_eq(presented: &[u8], ours: &[u8]) -> bool {
    let digest = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b);
    let (x, y) = (digest(presented), digest(ours));
    x.as_ref()
        .iter()
        .zip(y.as_ref())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// The content type of an error (RFC 9457).
const PROBLEM: &str = "application/problem+json";

/// An error as one JSON problem shape (RFC 9457): `type` `about:blank`, so `title` is the
/// status's phrase, and `detail` says what went wrong.
fn error(status: StatusCode, detail: String) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    (status, [(header::CONTENT_TYPE, PROBLEM)], body.to_string()).into_response()
}

/// Gives the errors the framework writes itself (a body that is not JSON, an unknown route, a
/// body over the limit, a missing query parameter) the same problem shape as ours.
async fn as_problem(response: Response) -> Response {
    let status = response.status();
    let already = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes() == PROBLEM.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || already {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let detail = String::from_utf8_lossy(&body).trim().to_string();
    let detail = if detail.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        detail
    };
    error(status, detail)
}

/// The HTTP status of an operator error (the API's and the console's).
pub(crate) fn status_of(e: &OperatorError) -> StatusCode {
    match e {
        OperatorError::BadInput(_)
        | OperatorError::Release(_)
        | OperatorError::UntrustedRelease(_) => StatusCode::BAD_REQUEST,
        OperatorError::NotFound(_) => StatusCode::NOT_FOUND,
        OperatorError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        OperatorError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        OperatorError::Audit(_) | OperatorError::Refused(_) => StatusCode::CONFLICT,
    }
}

impl IntoResponse for OperatorError {
    fn into_response(self) -> Response {
        error(status_of(&self), self.to_string())
    }
}

type ApiResult<T> = Result<axum::Json<T>, OperatorError>;

/// Paging of lists.
#[derive(Debug, Deserialize, Serialize, Default)]
pub struct Page {
    /// Devices: start after this device (`MAKER/SERIAL`, as listed).
    pub after: Option<String>,
    /// Audit: start at this sequence number (default: the newest `limit` entries).
    pub from: Option<u64>,
    /// Page size.
    pub limit: Option<usize>,
}

impl Page {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(1000).min(MAX_PAGE)
    }
}
