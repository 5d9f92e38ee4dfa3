//! The admin API: HTTP on loopback, bearer-token authenticated, JSON out.
//!
//! ```text
//! GET  /v1/health                 liveness (no token needed)
//! GET  /v1/anchors                manufacturer trust anchors
//! POST /v1/anchors                import anchors (body: PEM)
//! POST /v1/vouchers               import a voucher bundle (body: CBOR, see factory voucher)
//! GET  /v1/devices?after=&limit=  devices in serial order
//! GET  /v1/devices/{serial}       one device
//! POST /v1/devices/{serial}/revoke {"reason": "key-compromise"}: revoke and quarantine
//! POST /v1/devices/{serial}/quarantine {"reason": "..."}: refuse it, keep its certificates
//! POST /v1/rotations              {"serials": [..]} or {"all": true}, optional "rate"
//! GET  /v1/rotations?since=T      progress of the rotations ordered since T
//! POST /v1/ca/rollover            new issuing CA generation, every device re-keys
//! GET  /v1/crls                   the CRLs last published
//! GET  /v1/audit?from=&limit=     audit entries
//! GET  /v1/audit/verify           verify the audit hash chain
//! GET  /crl/issuing-ca-{n}.crl    CRL of issuing CA generation n, DER (no token needed)
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
use super::control::{Control, RolloverReport};
use super::orders::{Crl, OrderReport, RotationStatus};
use super::views::{AnchorView, AuditEntryView, DeviceView};

/// Most devices or audit entries in one page.
pub const MAX_PAGE: usize = 10_000;

#[derive(Clone)]
struct Api {
    control: Arc<Control>,
    token: Arc<String>,
}

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Arc<Control>,
    token: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(control, token))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The API's routes.
pub fn router(control: Arc<Control>, token: String) -> Router {
    let api = Api {
        control,
        token: Arc::new(token),
    };
    let authed = Router::new()
        .route("/v1/anchors", get(list_anchors).post(import_anchor))
        .route("/v1/vouchers", axum::routing::post(import_vouchers))
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{serial}", get(show_device))
        .route("/v1/devices/{serial}/revoke", axum::routing::post(revoke))
        .route(
            "/v1/devices/{serial}/quarantine",
            axum::routing::post(quarantine),
        )
        .route("/v1/rotations", get(rotation_status).post(rotate))
        .route("/v1/ca/rollover", axum::routing::post(rollover))
        .route("/v1/crls", get(list_crls))
        .route("/v1/audit", get(list_audit))
        .route("/v1/audit/verify", get(verify_audit))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate));
    Router::new()
        .route(
            "/v1/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/crl/{file}", get(crl))
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
            OperatorError::Audit(_) | OperatorError::Refused(_) => StatusCode::CONFLICT,
        };
        error(status, self.to_string())
    }
}

type ApiResult<T> = Result<axum::Json<T>, OperatorError>;

async fn list_anchors(State(api): State<Api>) -> ApiResult<Vec<AnchorView>> {
    Ok(axum::Json(
        api.control
            .service
            .anchors()?
            .iter()
            .map(AnchorView::from)
            .collect(),
    ))
}

async fn import_anchor(State(api): State<Api>, body: String) -> ApiResult<Vec<AnchorView>> {
    let added = api.control.service.import_anchor(&body).await?;
    Ok(axum::Json(added.iter().map(AnchorView::from).collect()))
}

async fn import_vouchers(State(api): State<Api>, body: Bytes) -> ApiResult<super::ImportReport> {
    Ok(axum::Json(
        api.control.service.import_vouchers(&body).await?,
    ))
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
    let devices = api
        .control
        .service
        .devices(page.after.as_deref(), page.limit())?;
    Ok(axum::Json(devices.iter().map(DeviceView::from).collect()))
}

async fn show_device(State(api): State<Api>, Path(serial): Path<String>) -> ApiResult<DeviceView> {
    Ok(axum::Json(DeviceView::from(
        &api.control.service.device(&serial)?,
    )))
}

async fn list_audit(
    State(api): State<Api>,
    Query(page): Query<Page>,
) -> ApiResult<Vec<AuditEntryView>> {
    let entries = api
        .control
        .service
        .audit(page.from.unwrap_or(1), page.limit())?;
    Ok(axum::Json(
        entries.iter().map(AuditEntryView::from).collect(),
    ))
}

async fn verify_audit(State(api): State<Api>) -> ApiResult<crate::audit::ChainSummary> {
    Ok(axum::Json(api.control.service.verify_audit()?))
}

/// Body of `POST /v1/devices/{serial}/revoke`.
#[derive(Debug, Deserialize, Serialize)]
pub struct RevokeRequest {
    /// RFC 5280 reason (kebab-case).
    pub reason: certs::crl::Reason,
}

async fn revoke(
    State(api): State<Api>,
    Path(serial): Path<String>,
    axum::Json(body): axum::Json<RevokeRequest>,
) -> ApiResult<DeviceView> {
    let record = api.control.revoke(&serial, body.reason).await?;
    Ok(axum::Json(DeviceView::from(&record)))
}

/// Body of `POST /v1/devices/{serial}/quarantine`.
#[derive(Debug, Deserialize, Serialize)]
pub struct QuarantineRequest {
    /// Why, for the audit log.
    pub reason: String,
}

async fn quarantine(
    State(api): State<Api>,
    Path(serial): Path<String>,
    axum::Json(body): axum::Json<QuarantineRequest>,
) -> ApiResult<DeviceView> {
    let record = api.control.quarantine(&serial, &body.reason).await?;
    Ok(axum::Json(DeviceView::from(&record)))
}

/// Body of `POST /v1/rotations`.
#[derive(Debug, Deserialize, Serialize, Default)]
pub struct RotateRequest {
    /// Devices to re-key.
    #[serde(default)]
    pub serials: Vec<String>,
    /// Every active device instead.
    #[serde(default)]
    pub all: bool,
    /// Commands pushed per second at most.
    #[serde(default)]
    pub rate: Option<u32>,
}

async fn rotate(
    State(api): State<Api>,
    axum::Json(body): axum::Json<RotateRequest>,
) -> ApiResult<OrderReport> {
    if !body.all && body.serials.is_empty() {
        return Err(OperatorError::BadInput(
            "name serials or ask for all".into(),
        ));
    }
    let serials = (!body.all).then_some(body.serials);
    Ok(axum::Json(api.control.rotate(serials, body.rate).await?))
}

/// Query of `GET /v1/rotations`.
#[derive(Debug, Deserialize, Serialize, Default)]
pub struct Since {
    /// Only rotations ordered at or after this time.
    pub since: Option<u64>,
}

async fn rotation_status(
    State(api): State<Api>,
    Query(q): Query<Since>,
) -> ApiResult<RotationStatus> {
    Ok(axum::Json(
        api.control.service.rotation_status(q.since.unwrap_or(0))?,
    ))
}

/// Body of `POST /v1/ca/rollover`.
#[derive(Debug, Deserialize, Serialize, Default)]
pub struct RolloverRequest {
    /// Rotation commands pushed per second at most.
    #[serde(default)]
    pub rate: Option<u32>,
}

async fn rollover(
    State(api): State<Api>,
    axum::Json(body): axum::Json<RolloverRequest>,
) -> ApiResult<RolloverReport> {
    Ok(axum::Json(api.control.rollover(body.rate).await?))
}

async fn list_crls(State(api): State<Api>) -> ApiResult<Vec<Crl>> {
    Ok(axum::Json(api.control.crls()))
}

async fn crl(State(api): State<Api>, Path(file): Path<String>) -> Response {
    let generation = file
        .strip_prefix("issuing-ca-")
        .and_then(|f| f.strip_suffix(".crl"))
        .and_then(|n| n.parse::<u32>().ok());
    match api
        .control
        .crls()
        .into_iter()
        .find(|c| Some(c.generation) == generation)
    {
        Some(c) => ([(header::CONTENT_TYPE, "application/pkix-crl")], c.der).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no CRL {file}")),
    }
}
