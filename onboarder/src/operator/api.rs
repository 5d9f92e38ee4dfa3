//! The admin API: HTTP on loopback, bearer-token authenticated, JSON out.
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
//! GET  /v1/crls                   the CRLs last published
//! GET  /v1/stats                  devices per state, live sessions, refusals and shed load
//! GET  /v1/firmware/keys          firmware-signing keys; POST {"vendor", "pem"} imports one
//! GET  /v1/firmware/releases      releases; POST (CBOR [manifest, image]) uploads one
//! GET  /v1/campaigns              campaigns; POST (CampaignSpec) creates one
//! GET  /v1/campaigns/{id}         status per wave (and per device with ?devices=true)
//! POST /v1/campaigns/{id}/{order} start, pause, resume or abort
//! GET  /v1/audit?from=&limit=     audit entries from `from`, or the newest `limit`
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
use super::views::{AnchorView, AuditEntryView, DeviceView};
use crate::control::{Control, RolloverReport};
use crate::core::DeviceId;
use crate::service::{Crl, OrderReport, RotationStatus};

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
        .route("/v1/devices/{device}", get(show_device))
        .route("/v1/devices/{device}/revoke", axum::routing::post(revoke))
        .route(
            "/v1/devices/{device}/quarantine",
            axum::routing::post(quarantine),
        )
        .route(
            "/v1/devices/{device}/reset-onboarding",
            axum::routing::post(reset_onboarding),
        )
        .route("/v1/decommissions", axum::routing::post(decommission))
        .route(
            "/v1/devices/{device}/decommission/force",
            axum::routing::post(force_decommission),
        )
        .route("/v1/devices/{device}/sanitization", get(sanitization))
        .route(
            "/v1/devices/{device}/sanitization.html",
            get(sanitization_html),
        )
        .route("/v1/rotations", get(rotation_status).post(rotate))
        .route("/v1/ca/rollover", axum::routing::post(rollover))
        .route("/v1/crls", get(list_crls))
        .route("/v1/stats", get(stats))
        .route(
            "/v1/firmware/keys",
            get(list_firmware_keys).post(import_firmware_key),
        )
        .route(
            "/v1/firmware/releases",
            get(list_releases).post(upload_release),
        )
        .route("/v1/campaigns", get(list_campaigns).post(create_campaign))
        .route("/v1/campaigns/{id}", get(campaign_status))
        .route(
            "/v1/campaigns/{id}/{order}",
            axum::routing::post(order_campaign),
        )
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
        .layer(DefaultBodyLimit::max(
            (crate::store::images::MAX_IMAGE as usize).max(protocol::voucher::MAX_BUNDLE) + 65536,
        ))
        .with_state(api)
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
fn constant_time_eq(presented: &[u8], ours: &[u8]) -> bool {
    let digest = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b);
    let (x, y) = (digest(presented), digest(ours));
    x.as_ref()
        .iter()
        .zip(y.as_ref())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
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
            OperatorError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
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

async fn import_anchor(
    State(api): State<Api>,
    axum::Json(body): axum::Json<super::AnchorImport>,
) -> ApiResult<Vec<AnchorView>> {
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

async fn list_devices(
    State(api): State<Api>,
    Query(page): Query<Page>,
) -> ApiResult<Vec<DeviceView>> {
    let after = page
        .after
        .as_deref()
        .map(|a| a.parse::<DeviceId>())
        .transpose()
        .map_err(|e| OperatorError::BadInput(e.to_string()))?;
    let devices = api.control.service.devices(after.as_ref(), page.limit())?;
    Ok(axum::Json(devices.iter().map(|d| view(&api, d)).collect()))
}

async fn show_device(State(api): State<Api>, Path(device): Path<String>) -> ApiResult<DeviceView> {
    let id = api.control.service.resolve(&device)?;
    Ok(axum::Json(DeviceView::from(
        &api.control.service.device(&id)?,
    )))
}

async fn list_audit(
    State(api): State<Api>,
    Query(page): Query<Page>,
) -> ApiResult<Vec<AuditEntryView>> {
    let limit = page.limit();
    let from = match page.from {
        Some(from) => from,
        None => {
            let (head, _) = api.control.service.store().audit_head()?;
            head.saturating_sub(limit as u64) + 1
        }
    };
    let entries = api.control.service.audit_entries(from, limit)?;
    Ok(axum::Json(
        entries.iter().map(AuditEntryView::from).collect(),
    ))
}

async fn verify_audit(State(api): State<Api>) -> ApiResult<crate::audit::ChainSummary> {
    Ok(axum::Json(api.control.service.verify_audit()?))
}

/// Body of `POST /v1/devices/{device}/revoke`.
#[derive(Debug, Deserialize, Serialize)]
pub struct RevokeRequest {
    /// RFC 5280 reason (kebab-case).
    pub reason: certs::crl::Reason,
}

async fn revoke(
    State(api): State<Api>,
    Path(device): Path<String>,
    axum::Json(body): axum::Json<RevokeRequest>,
) -> ApiResult<DeviceView> {
    let id = api.control.service.resolve(&device)?;
    let record = api.control.revoke(&id, body.reason).await?;
    Ok(axum::Json(view(&api, &record)))
}

/// Body of `POST /v1/devices/{device}/quarantine`.
#[derive(Debug, Deserialize, Serialize)]
pub struct QuarantineRequest {
    /// Why, for the audit log.
    pub reason: String,
}

async fn quarantine(
    State(api): State<Api>,
    Path(device): Path<String>,
    axum::Json(body): axum::Json<QuarantineRequest>,
) -> ApiResult<DeviceView> {
    let id = api.control.service.resolve(&device)?;
    let record = api.control.quarantine(&id, &body.reason).await?;
    Ok(axum::Json(view(&api, &record)))
}

async fn reset_onboarding(
    State(api): State<Api>,
    Path(device): Path<String>,
    axum::Json(body): axum::Json<QuarantineRequest>,
) -> ApiResult<DeviceView> {
    let id = api.control.service.resolve(&device)?;
    let record = api.control.reset_onboarding(&id, &body.reason).await?;
    Ok(axum::Json(view(&api, &record)))
}

/// Resolves what an order names; the names that do not resolve are refused with why.
fn resolve_all(api: &Api, named: &[String]) -> (Vec<DeviceId>, Vec<(String, String)>) {
    let (mut ids, mut refused) = (Vec::new(), Vec::new());
    for name in named {
        match api.control.service.resolve(name) {
            Ok(id) => ids.push(id),
            Err(e) => refused.push((name.clone(), e.to_string())),
        }
    }
    (ids, refused)
}

/// Body of `POST /v1/rotations`.
#[derive(Debug, Deserialize, Serialize, Default)]
pub struct RotateRequest {
    /// Devices to re-key.
    #[serde(default)]
    pub devices: Vec<String>,
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
    if !body.all && body.devices.is_empty() {
        return Err(OperatorError::BadInput(
            "name devices or ask for all".into(),
        ));
    }
    if body.all {
        return Ok(axum::Json(api.control.rotate(None, body.rate).await?));
    }
    let (ids, unknown) = resolve_all(&api, &body.devices);
    let mut report = api.control.rotate(Some(ids), body.rate).await?;
    report.refused.extend(unknown);
    Ok(axum::Json(report))
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

use crate::core::campaign::{Campaign, CampaignOrder};
use crate::core::release::{FirmwareKey, Release};
use crate::service::{CampaignSpec, CampaignStatus};

/// Body of `POST /v1/firmware/keys`.
#[derive(Debug, Deserialize, Serialize)]
pub struct FirmwareKeyRequest {
    /// Vendor id the key signs for.
    pub vendor: String,
    /// The key, PEM `PUBLIC KEY`.
    pub pem: String,
}

async fn import_firmware_key(
    State(api): State<Api>,
    axum::Json(body): axum::Json<FirmwareKeyRequest>,
) -> ApiResult<FirmwareKey> {
    Ok(axum::Json(
        api.control
            .service
            .import_firmware_key(&body.pem, &body.vendor)
            .await?,
    ))
}

async fn list_firmware_keys(State(api): State<Api>) -> ApiResult<Vec<FirmwareKey>> {
    Ok(axum::Json(api.control.service.firmware_keys()?))
}

/// A release as listed (without its manifest bytes).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ReleaseView {
    /// SHA-256 of the image, hex.
    pub digest: String,
    /// Vendor.
    pub vendor_id: String,
    /// Class.
    pub class_id: String,
    /// Sequence number.
    pub sequence: u64,
    /// Version.
    pub version: String,
    /// Size in bytes.
    pub size: u64,
    /// Uploaded at.
    pub uploaded_at: u64,
}

impl From<&Release> for ReleaseView {
    fn from(r: &Release) -> Self {
        ReleaseView {
            digest: certs::inspect::hex(&r.digest),
            vendor_id: r.vendor_id.clone(),
            class_id: r.class_id.clone(),
            sequence: r.sequence,
            version: r.version.clone(),
            size: r.size,
            uploaded_at: r.uploaded_at,
        }
    }
}

async fn upload_release(State(api): State<Api>, body: Bytes) -> ApiResult<ReleaseView> {
    let (manifest, image): (serde_bytes::ByteBuf, serde_bytes::ByteBuf) =
        protocol::cbor::from_slice(&body, body.len())
            .map_err(|e| OperatorError::BadInput(format!("upload body: {e}")))?;
    let release = api
        .control
        .service
        .upload_release(&manifest, &image)
        .await?;
    Ok(axum::Json(ReleaseView::from(&release)))
}

async fn list_releases(State(api): State<Api>) -> ApiResult<Vec<ReleaseView>> {
    Ok(axum::Json(
        api.control
            .service
            .releases()?
            .iter()
            .map(ReleaseView::from)
            .collect(),
    ))
}

async fn create_campaign(
    State(api): State<Api>,
    axum::Json(spec): axum::Json<CampaignSpec>,
) -> ApiResult<Campaign> {
    Ok(axum::Json(api.control.service.create_campaign(spec).await?))
}

async fn list_campaigns(State(api): State<Api>) -> ApiResult<Vec<Campaign>> {
    Ok(axum::Json(api.control.service.campaigns()?))
}

/// Query of `GET /v1/campaigns/{id}`.
#[derive(Debug, Deserialize, Serialize, Default)]
pub struct CampaignQuery {
    /// Include every device (reads their records).
    #[serde(default)]
    pub devices: bool,
}

async fn campaign_status(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<CampaignQuery>,
) -> ApiResult<CampaignStatus> {
    Ok(axum::Json(
        api.control.service.campaign_status(&id, q.devices)?,
    ))
}

async fn order_campaign(
    State(api): State<Api>,
    Path((id, order)): Path<(String, String)>,
) -> ApiResult<Campaign> {
    Ok(axum::Json(
        api.control
            .service
            .order_campaign(&id, order.parse::<CampaignOrder>()?)
            .await?,
    ))
}

/// Body of `POST /v1/decommissions`.
#[derive(Debug, Deserialize, Serialize)]
pub struct DecommissionRequest {
    /// Devices to decommission.
    pub devices: Vec<String>,
    /// Sanitization method.
    pub method: protocol::attestation::WipeMethod,
}

async fn decommission(
    State(api): State<Api>,
    axum::Json(body): axum::Json<DecommissionRequest>,
) -> ApiResult<OrderReport> {
    if body.devices.is_empty() {
        return Err(OperatorError::BadInput("name the devices".into()));
    }
    let (ids, unknown) = resolve_all(&api, &body.devices);
    let mut report = api.control.decommission(ids, body.method).await?;
    report.refused.extend(unknown);
    Ok(axum::Json(report))
}

async fn force_decommission(
    State(api): State<Api>,
    Path(device): Path<String>,
    axum::Json(body): axum::Json<QuarantineRequest>,
) -> ApiResult<DeviceView> {
    let id = api.control.service.resolve(&device)?;
    let record = api.control.force_decommission(&id, &body.reason).await?;
    Ok(axum::Json(view(&api, &record)))
}

async fn sanitization(
    State(api): State<Api>,
    Path(device): Path<String>,
) -> ApiResult<crate::core::sanitization::SanitizationCertificate> {
    let id = api.control.service.resolve(&device)?;
    Ok(axum::Json(
        api.control.service.sanitization_certificate(&id)?,
    ))
}

async fn sanitization_html(
    State(api): State<Api>,
    Path(device): Path<String>,
) -> Result<Response, OperatorError> {
    let id = api.control.service.resolve(&device)?;
    let certificate = api.control.service.sanitization_certificate(&id)?;
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        certificate.to_html(),
    )
        .into_response())
}

/// Counters for dashboards and load tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Stats {
    /// Devices per lifecycle state.
    pub states: std::collections::BTreeMap<String, u64>,
    /// Live operational sessions.
    pub sessions: usize,
    /// Bytes of incomplete device requests held now.
    pub frame_bytes_held: usize,
    /// Refusals and shed load.
    #[serde(flatten)]
    pub metrics: crate::metrics::MetricsSnapshot,
}

async fn stats(State(api): State<Api>) -> ApiResult<Stats> {
    let states = api.control.service.state_counts()?;
    Ok(axum::Json(Stats {
        states,
        sessions: api.control.sessions.len(),
        frame_bytes_held: api.control.frames.held(),
        metrics: api.control.service.metrics().snapshot(),
    }))
}
