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
//! POST /v1/decommissions          {"devices": [..], "method": "clear"|"purge-cryptographic-erase",
//!                                "export_to": "age1..." (hand the data back first)}
//! POST /v1/devices/{device}/decommission/force {"reason": "..."}: no attestation
//! GET  /v1/devices/{device}/sanitization       certificate of sanitization (JSON)
//! GET  /v1/devices/{device}/sanitization.html  the same, printable
//! GET  /v1/devices/{device}/exported-data      the data it handed back (age file)
//! GET  /v1/devices/{device}/history            its history, signed, verifiable offline (CBOR)
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
//! GET  /v1/firmware/releases      releases; POST (CBOR [manifest, image, SBOM?]) uploads one
//! GET  /v1/firmware/releases/{release}/sbom  the release's SBOM (CycloneDX or SPDX JSON)
//! GET  /v1/devices/{device}/sbom  the SBOM of the release the device runs
//! GET  /v1/campaigns              campaigns; POST (CampaignSpec) creates one
//! GET  /v1/campaigns/{id}         status per wave (and per device with ?devices=true)
//! POST /v1/campaigns/{id}/{order} start, pause, resume or abort
//! GET  /v1/support                support periods by device class
//! PUT  /v1/support/{class}        {"ends_on": "YYYY-MM-DD", "notice_days": 90}: devices are
//!                                told once the notice period begins
//! GET  /v1/vex                    VEX statements; POST (OpenVEX or CycloneDX JSON) imports
//! GET  /v1/vulnerabilities        per vulnerability and affected release: devices, the fixing
//!                                release and the campaign that would bring them there
//! GET  /v1/devices/{device}/vulnerabilities   what the release it runs is exposed to
//! GET  /v1/devices/{device}/label its live label (JSON) and URL
//! GET  /v1/labels/settings        label base URL and fields; PUT sets them
//! GET  /label/{token}[/json|/qr.svg|/qr.png|/sbom]  (HTTPS listener, for anyone) the label
//! GET  /v1/audit?from=&limit=     audit entries from `from`, or the newest `limit`
//! GET  /v1/audit/verify           verify the audit hash chain
//! GET  /crl/issuing-ca-{n}.crl    CRL of issuing CA generation n, DER (no token needed)
//! ```

mod devices;
mod firmware;
mod fleet;
mod metrics;
mod transparency;

pub(crate) use devices::run_search;
pub use devices::{
    DecommissionRequest, QuarantineRequest, RevokeRequest, SearchParams, SearchView,
};
pub use firmware::{CampaignQuery, FirmwareKeyRequest, ReleaseView};
pub use fleet::{RolloverRequest, RotateRequest, Since, Stats};
pub use transparency::SupportRequest;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
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
    /// The OpenAPI description, rendered once the routes are registered.
    openapi: Arc<std::sync::OnceLock<String>>,
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

/// The API's routes, and its OpenAPI description made from the same registrations (so no
/// route is missing from it).
fn routes(api: Api) -> (Router, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let authed = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(devices::list_anchors, devices::import_anchor))
        .routes(routes!(devices::import_vouchers))
        .routes(routes!(devices::list_devices))
        .routes(routes!(devices::search))
        .routes(routes!(devices::list_queries))
        .routes(routes!(devices::save_query))
        .routes(routes!(devices::show_device))
        .routes(routes!(devices::label))
        .routes(routes!(devices::revoke))
        .routes(routes!(devices::quarantine))
        .routes(routes!(devices::reset_onboarding))
        .routes(routes!(devices::decommission))
        .routes(routes!(devices::force_decommission))
        .routes(routes!(devices::sanitization))
        .routes(routes!(devices::sanitization_html))
        .routes(routes!(devices::exported_data))
        .routes(routes!(devices::history))
        .routes(routes!(fleet::rotation_status, fleet::rotate))
        .routes(routes!(fleet::rollover))
        .routes(routes!(fleet::root_rollover))
        .routes(routes!(fleet::roots))
        .routes(routes!(fleet::list_crls))
        .routes(routes!(fleet::stats))
        .routes(routes!(metrics::metrics))
        .routes(routes!(
            firmware::list_firmware_keys,
            firmware::import_firmware_key
        ))
        .routes(routes!(firmware::list_releases, firmware::upload_release))
        .routes(routes!(firmware::release_sbom))
        .routes(routes!(firmware::device_sbom))
        .routes(routes!(firmware::list_campaigns, firmware::create_campaign))
        .routes(routes!(firmware::campaign_status))
        .routes(routes!(firmware::order_campaign))
        .routes(routes!(transparency::list_support))
        .routes(routes!(transparency::set_support))
        .routes(routes!(transparency::list_vex, transparency::import_vex))
        .routes(routes!(transparency::vulnerabilities))
        .routes(routes!(transparency::device_vulnerabilities))
        .routes(routes!(transparency::device_label))
        .routes(routes!(
            transparency::label_settings,
            transparency::set_label_settings
        ))
        .routes(routes!(devices::list_audit))
        .routes(routes!(devices::verify_audit))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate));
    let public = OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(openapi))
        .routes(routes!(fleet::crl));
    let (router, doc) = public
        .merge(authed)
        .with_state(api.clone())
        .split_for_parts();
    (router, doc)
}

/// The API's routes, with the operator's console beside them.
pub fn router(control: Arc<Control>, token: String) -> Router {
    let console = super::console::router(control.clone(), &token);
    let api = Api {
        control,
        token: Arc::new(token),
        openapi: Arc::default(),
    };
    let (router, doc) = routes(api.clone());
    let _ = api.openapi.set(doc.to_json().unwrap_or_default());
    router
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".into()) })
        .layer(axum::middleware::map_response(as_problem))
        .layer(DefaultBodyLimit::max(
            (crate::store::images::MAX_IMAGE as usize).max(protocol::voucher::MAX_BUNDLE) + 65536,
        ))
        .merge(console)
}

/// The admin API's OpenAPI description (the paths come from the handlers).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "onboarder admin API",
        description = "Onboarding and lifecycle of IoT devices: anchors and vouchers, devices \
                       and orders about them, certificates and CRLs, firmware campaigns, the \
                       audit log. Every error is an RFC 9457 problem."
    ),
    modifiers(&BearerToken),
    components(schemas(Problem)),
    security(("bearer" = [])),
    tags(
        (name = "devices", description = "Device records, search, labels"),
        (name = "anchors", description = "Manufacturer anchors and vouchers"),
        (name = "orders", description = "Orders about devices"),
        (name = "ca", description = "Issuing CAs, owner roots, CRLs"),
        (name = "firmware", description = "Keys, releases, campaigns"),
        (name = "fleet", description = "Counters and metrics"),
        (name = "audit", description = "The audit log and its hash chain"),
        (name = "transparency", description = "Support periods, vulnerability status, live labels"),
        (name = "meta", description = "Health and this description")
    )
)]
struct ApiDoc;

/// The bearer token every route but the public ones asks for (`onboarder token` prints it).
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// An error (RFC 9457): `type` is `about:blank`, `title` the status's phrase.
#[derive(utoipa::ToSchema, Serialize)]
pub struct Problem {
    /// Always `about:blank`.
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: String,
    /// The HTTP status's phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong.
    pub detail: String,
}

/// Every route's errors: one problem shape, whatever the status.
struct Problems;

impl utoipa::IntoResponses for Problems {
    fn responses() -> std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    > {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = ResponseBuilder::new()
            .description("An error, as an RFC 9457 problem")
            .content(
                PROBLEM,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        [("default".to_string(), problem.into())].into()
    }
}

/// Bytes (a CBOR upload, a DER CRL).
struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, SchemaFormat, Type};
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok`.
    status: String,
}

/// Liveness (no token needed).
#[utoipa::path(get, path = "/v1/health", tag = "meta", security(()), responses((status = 200, description = "Alive", body = Health), Problems))]
async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// This description, OpenAPI 3.1 (no token needed).
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", security(()), responses((status = 200, description = "The API's OpenAPI description", body = Object), Problems))]
async fn openapi(State(api): State<Api>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        api.openapi.get().cloned().unwrap_or_default(),
    )
        .into_response()
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
    DeviceView::new(record, &api.control.service)
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
    let problem = Problem {
        kind: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("Error").into(),
        status: status.as_u16(),
        detail,
    };
    let body = serde_json::to_string(&problem).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, PROBLEM)], body).into_response()
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
        | OperatorError::Sbom(_)
        | OperatorError::UntrustedRelease(_) => StatusCode::BAD_REQUEST,
        OperatorError::NotFound(_) => StatusCode::NOT_FOUND,
        OperatorError::Store(crate::store::StoreError::DiskFull { .. }) => {
            StatusCode::INSUFFICIENT_STORAGE
        }
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

/// Runs `read` on the blocking pool ([`crate::control::off_workers`]): for reads that visit
/// every device or audit entry.
async fn off_workers<T: Send + 'static>(
    api: &Api,
    read: impl FnOnce(&Control) -> Result<T, OperatorError> + Send + 'static,
) -> ApiResult<T> {
    let control = api.control.clone();
    crate::control::off_workers(move || read(&control))
        .await
        .map(axum::Json)
}

/// Paging of lists.
#[derive(utoipa::IntoParams, Debug, Deserialize, Serialize, Default)]
#[into_params(parameter_in = Query)]
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
