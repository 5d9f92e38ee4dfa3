//! The admin API: HTTP on loopback, bearer-token authenticated, JSON out.
//!
//! ```text
//! GET  /v1/health                 liveness (no token needed)
//! GET  /v1/anchors                manufacturer trust anchors
//! POST /v1/anchors                import anchors (body: PEM)
//! POST /v1/vouchers               import a voucher bundle (body: CBOR, see factory voucher)
//! GET  /v1/devices?after=&limit=  devices in serial order
//! GET  /v1/devices/{serial}       one device
//! GET  /v1/audit?from=&limit=     audit entries
//! GET  /v1/audit/verify           verify the audit hash chain
//! ```

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::OperatorError;
use super::views::{AnchorView, AuditEntryView, DeviceView};
use crate::service::Service;

/// Most devices or audit entries in one page.
pub const MAX_PAGE: usize = 10_000;

#[derive(Clone)]
struct Api {
    service: Arc<Service>,
    token: Arc<String>,
}

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    token: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(service, token))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The API's routes.
pub fn router(service: Arc<Service>, token: String) -> Router {
    let api = Api {
        service,
        token: Arc::new(token),
    };
    let authed = Router::new()
        .route("/v1/anchors", get(list_anchors).post(import_anchor))
        .route("/v1/vouchers", axum::routing::post(import_vouchers))
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{serial}", get(show_device))
        .route("/v1/audit", get(list_audit))
        .route("/v1/audit/verify", get(verify_audit))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate));
    Router::new()
        .route(
            "/v1/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .merge(authed)
        .layer(DefaultBodyLimit::max(protocol::voucher::MAX_BUNDLE))
        .with_state(api)
}

async fn authenticate(
    State(api): State<Api>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

impl IntoResponse for OperatorError {
    fn into_response(self) -> Response {
        let status = match &self {
            OperatorError::BadInput(_) => StatusCode::BAD_REQUEST,
            OperatorError::NotFound(_) => StatusCode::NOT_FOUND,
            OperatorError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            OperatorError::Audit(_) => StatusCode::CONFLICT,
        };
        error(status, self.to_string())
    }
}

type ApiResult<T> = Result<axum::Json<T>, OperatorError>;

async fn list_anchors(State(api): State<Api>) -> ApiResult<Vec<AnchorView>> {
    Ok(axum::Json(
        api.service
            .anchors()?
            .iter()
            .map(AnchorView::from)
            .collect(),
    ))
}

async fn import_anchor(State(api): State<Api>, body: String) -> ApiResult<Vec<AnchorView>> {
    let added = api.service.import_anchor(&body).await?;
    Ok(axum::Json(added.iter().map(AnchorView::from).collect()))
}

async fn import_vouchers(State(api): State<Api>, body: Bytes) -> ApiResult<super::ImportReport> {
    Ok(axum::Json(api.service.import_vouchers(&body).await?))
}

/// Paging of lists.
#[derive(Debug, Deserialize, Serialize, Default)]
pub struct Page {
    /// Devices: start after this serial.
    pub after: Option<String>,
    /// Audit: start at this sequence number.
    pub from: Option<u64>,
    /// Page size.
    pub limit: Option<usize>,
}

impl Page {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(1000).min(MAX_PAGE)
    }
}

async fn list_devices(
    State(api): State<Api>,
    Query(page): Query<Page>,
) -> ApiResult<Vec<DeviceView>> {
    let devices = api.service.devices(page.after.as_deref(), page.limit())?;
    Ok(axum::Json(devices.iter().map(DeviceView::from).collect()))
}

async fn show_device(State(api): State<Api>, Path(serial): Path<String>) -> ApiResult<DeviceView> {
    Ok(axum::Json(DeviceView::from(&api.service.device(&serial)?)))
}

async fn list_audit(
    State(api): State<Api>,
    Query(page): Query<Page>,
) -> ApiResult<Vec<AuditEntryView>> {
    let entries = api.service.audit(page.from.unwrap_or(1), page.limit())?;
    Ok(axum::Json(
        entries.iter().map(AuditEntryView::from).collect(),
    ))
}

async fn verify_audit(State(api): State<Api>) -> ApiResult<crate::audit::ChainSummary> {
    Ok(axum::Json(api.service.verify_audit()?))
}
