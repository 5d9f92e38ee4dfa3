//! Routes about devices: manufacturer anchors, voucher imports, device records, orders about
//! one device, decommissioning and its certificates, and the audit log.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{Api, ApiResult, Page, off_workers, view};
use crate::core::DeviceId;
use crate::core::query::{DeviceQuery, Labels};
use crate::operator::OperatorError;
use crate::operator::views::{AnchorView, AuditEntryView, DeviceView};
use crate::service::OrderReport;

/// Manufacturer trust anchors.
#[utoipa::path(get, path = "/v1/anchors", tag = "anchors", responses((status = 200, description = "OK", body = Vec<AnchorView>), super::Problems))]
pub(super) async fn list_anchors(State(api): State<Api>) -> ApiResult<Vec<AnchorView>> {
    Ok(axum::Json(
        api.control
            .service
            .anchors()?
            .iter()
            .map(AnchorView::from)
            .collect(),
    ))
}

/// Imports a manufacturer anchor (and its MASA certificate): the anchors added.
#[utoipa::path(post, path = "/v1/anchors", tag = "anchors", request_body = crate::service::AnchorImport, responses((status = 200, description = "OK", body = Vec<AnchorView>), super::Problems))]
pub(super) async fn import_anchor(
    State(api): State<Api>,
    axum::Json(body): axum::Json<crate::service::AnchorImport>,
) -> ApiResult<Vec<AnchorView>> {
    let added = api.control.service.import_anchor(&body).await?;
    Ok(axum::Json(added.iter().map(AnchorView::from).collect()))
}

/// Imports a voucher bundle (CBOR, as `factory voucher` writes it).
#[utoipa::path(post, path = "/v1/vouchers", tag = "anchors", request_body(content = super::Binary, content_type = "application/cbor"), responses((status = 200, description = "OK", body = crate::service::ImportReport), super::Problems))]
pub(super) async fn import_vouchers(
    State(api): State<Api>,
    body: Bytes,
) -> ApiResult<crate::service::ImportReport> {
    Ok(axum::Json(
        api.control.service.import_vouchers(&body).await?,
    ))
}

/// Devices in id order (maker, serial).
#[utoipa::path(get, path = "/v1/devices", tag = "devices", params(super::Page), responses((status = 200, description = "OK", body = Vec<DeviceView>), super::Problems))]
pub(super) async fn list_devices(
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

/// One device.
#[utoipa::path(get, path = "/v1/devices/{device}", tag = "devices", params(("device" = String, Path, description = "MAKER/SERIAL, or a serial only one manufacturer has")), responses((status = 200, description = "OK", body = DeviceView), super::Problems))]
pub(super) async fn show_device(
    State(api): State<Api>,
    Path(device): Path<String>,
) -> ApiResult<DeviceView> {
    let id = api.control.service.resolve(&device)?;
    Ok(axum::Json(view(&api, &api.control.service.device(&id)?)))
}

/// Audit entries from `from`, or the newest `limit`.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(super::Page), responses((status = 200, description = "OK", body = Vec<AuditEntryView>), super::Problems))]
pub(super) async fn list_audit(
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

/// Verifies the whole audit hash chain.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", responses((status = 200, description = "OK", body = crate::audit::ChainSummary), super::Problems))]
pub(super) async fn verify_audit(State(api): State<Api>) -> ApiResult<crate::audit::ChainSummary> {
    off_workers(&api, |control| control.service.verify_audit()).await
}

/// Body of `POST /v1/devices/{device}/revoke`.
#[derive(utoipa::ToSchema, Debug, Deserialize, Serialize)]
pub struct RevokeRequest {
    /// RFC 5280 reason (kebab-case).
    #[schema(value_type = String, example = "key-compromise")]
    pub reason: certs::crl::Reason,
}

/// Revokes every certificate of the device and quarantines it; the CRLs are published before the answer.
#[utoipa::path(post, path = "/v1/devices/{device}/revoke", tag = "orders", params(("device" = String, Path, description = "MAKER/SERIAL, or a serial only one manufacturer has")), request_body = RevokeRequest, responses((status = 200, description = "OK", body = DeviceView), super::Problems))]
pub(super) async fn revoke(
    State(api): State<Api>,
    Path(device): Path<String>,
    axum::Json(body): axum::Json<RevokeRequest>,
) -> ApiResult<DeviceView> {
    let id = api.control.service.resolve(&device)?;
    let record = api.control.revoke(&id, body.reason).await?;
    Ok(axum::Json(view(&api, &record)))
}

/// Body of `POST /v1/devices/{device}/quarantine`.
#[derive(utoipa::ToSchema, Debug, Deserialize, Serialize)]
pub struct QuarantineRequest {
    /// Why, for the audit log.
    pub reason: String,
}

/// Refuses the device, keeping its certificates.
#[utoipa::path(post, path = "/v1/devices/{device}/quarantine", tag = "orders", params(("device" = String, Path, description = "MAKER/SERIAL, or a serial only one manufacturer has")), request_body = QuarantineRequest, responses((status = 200, description = "OK", body = DeviceView), super::Problems))]
pub(super) async fn quarantine(
    State(api): State<Api>,
    Path(device): Path<String>,
    axum::Json(body): axum::Json<QuarantineRequest>,
) -> ApiResult<DeviceView> {
    let id = api.control.service.resolve(&device)?;
    let record = api.control.quarantine(&id, &body.reason).await?;
    Ok(axum::Json(view(&api, &record)))
}

/// Puts a device stuck in onboarding back to expected, its IDevID pin dropped.
#[utoipa::path(post, path = "/v1/devices/{device}/reset-onboarding", tag = "orders", params(("device" = String, Path, description = "MAKER/SERIAL, or a serial only one manufacturer has")), request_body = QuarantineRequest, responses((status = 200, description = "OK", body = DeviceView), super::Problems))]
pub(super) async fn reset_onboarding(
    State(api): State<Api>,
    Path(device): Path<String>,
    axum::Json(body): axum::Json<QuarantineRequest>,
) -> ApiResult<DeviceView> {
    let id = api.control.service.resolve(&device)?;
    let record = api.control.reset_onboarding(&id, &body.reason).await?;
    Ok(axum::Json(view(&api, &record)))
}

/// Resolves what an order names; the names that do not resolve are refused with why.
pub(super) fn resolve_all(api: &Api, named: &[String]) -> (Vec<DeviceId>, Vec<(String, String)>) {
    let (mut ids, mut refused) = (Vec::new(), Vec::new());
    for name in named {
        match api.control.service.resolve(name) {
            Ok(id) => ids.push(id),
            Err(e) => refused.push((name.clone(), e.to_string())),
        }
    }
    (ids, refused)
}

/// Body of `POST /v1/decommissions`.
#[derive(utoipa::ToSchema, Debug, Deserialize, Serialize)]
pub struct DecommissionRequest {
    /// Devices to decommission.
    pub devices: Vec<String>,
    /// Sanitization method.
    #[schema(value_type = String, example = "clear")]
    pub method: protocol::attestation::WipeMethod,
    /// Have each device hand its application data back first, encrypted to this age X25519
    /// recipient (`age1...`, from `age-keygen`); the onboarder keeps the ciphertext.
    #[serde(default)]
    pub export_to: Option<String>,
}

/// Orders devices to wipe themselves and attest it.
#[utoipa::path(post, path = "/v1/decommissions", tag = "orders", request_body = DecommissionRequest, responses((status = 200, description = "OK", body = OrderReport), super::Problems))]
pub(super) async fn decommission(
    State(api): State<Api>,
    axum::Json(body): axum::Json<DecommissionRequest>,
) -> ApiResult<OrderReport> {
    if body.devices.is_empty() {
        return Err(OperatorError::BadInput("name the devices".into()));
    }
    let (ids, unknown) = resolve_all(&api, &body.devices);
    let mut report = api
        .control
        .decommission_exporting(ids, body.method, body.export_to)
        .await?;
    report.refused.extend(unknown);
    Ok(axum::Json(report))
}

/// Decommissions a device that never answers: credentials revoked, no attestation.
#[utoipa::path(post, path = "/v1/devices/{device}/decommission/force", tag = "orders", params(("device" = String, Path, description = "MAKER/SERIAL, or a serial only one manufacturer has")), request_body = QuarantineRequest, responses((status = 200, description = "OK", body = DeviceView), super::Problems))]
pub(super) async fn force_decommission(
    State(api): State<Api>,
    Path(device): Path<String>,
    axum::Json(body): axum::Json<QuarantineRequest>,
) -> ApiResult<DeviceView> {
    let id = api.control.service.resolve(&device)?;
    let record = api.control.force_decommission(&id, &body.reason).await?;
    Ok(axum::Json(view(&api, &record)))
}

/// The certificate of sanitization of a decommissioned device (NIST SP 800-88).
#[utoipa::path(get, path = "/v1/devices/{device}/sanitization", tag = "devices", params(("device" = String, Path, description = "MAKER/SERIAL, or a serial only one manufacturer has")), responses((status = 200, description = "OK", body = crate::core::sanitization::SanitizationCertificate), super::Problems))]
pub(super) async fn sanitization(
    State(api): State<Api>,
    Path(device): Path<String>,
) -> ApiResult<crate::core::sanitization::SanitizationCertificate> {
    let id = api.control.service.resolve(&device)?;
    Ok(axum::Json(
        api.control.service.sanitization_certificate(&id)?,
    ))
}

/// The certificate of sanitization, printable.
#[utoipa::path(get, path = "/v1/devices/{device}/sanitization.html", tag = "devices", params(("device" = String, Path, description = "MAKER/SERIAL, or a serial only one manufacturer has")), responses((status = 200, description = "HTML", body = String, content_type = "text/html"), super::Problems))]
pub(super) async fn sanitization_html(
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

/// Query of `GET /v1/search`: the fields of a [`DeviceQuery`] (lists comma-separated), or a
/// saved query by name, and the page.
#[derive(utoipa::IntoParams, Debug, Default, Deserialize, Serialize)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// A saved query to run (the other filters are added to it).
    pub query: Option<String>,
    /// Serial prefix.
    pub serial: Option<String>,
    /// Lifecycle state.
    pub state: Option<crate::core::DeviceState>,
    /// Device class.
    pub class: Option<String>,
    /// Firmware version.
    pub firmware: Option<String>,
    /// Tags, comma-separated: all must be carried.
    pub tags: Option<String>,
    /// Attributes `name=value`, comma-separated.
    pub attrs: Option<String>,
    /// Newest live certificate expires before (seconds since the epoch).
    pub expires_before: Option<u64>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// Page size (default 50).
    pub limit: Option<usize>,
}

impl SearchParams {
    /// The query these parameters describe, on top of `saved`.
    pub fn to_query(&self, saved: Option<DeviceQuery>) -> Result<DeviceQuery, OperatorError> {
        let mut q = saved.unwrap_or_default();
        let set = |slot: &mut Option<String>, v: &Option<String>| {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                *slot = Some(v.clone());
            }
        };
        set(&mut q.serial, &self.serial);
        set(&mut q.class, &self.class);
        set(&mut q.firmware, &self.firmware);
        q.state = self.state.or(q.state);
        q.expires_before = self.expires_before.or(q.expires_before);
        use crate::core::query::{comma_list, name_value};
        q.tags.extend(self.tags.iter().flat_map(|t| comma_list(t)));
        for pair in self.attrs.iter().flat_map(|a| comma_list(a)) {
            let (k, v) = name_value(&pair).map_err(|e| OperatorError::BadInput(e.to_string()))?;
            q.attributes.insert(k, v);
        }
        q.validate()
            .map_err(|e| OperatorError::BadInput(e.to_string()))?;
        Ok(q)
    }
}

/// A page of `GET /v1/search`.
#[derive(utoipa::ToSchema, Debug, Deserialize, Serialize)]
pub struct SearchView {
    /// The devices found.
    pub devices: Vec<DeviceView>,
    /// Pass as `after` for the next page; absent when the search is over.
    pub next: Option<String>,
    /// Records read for this page (at most [`crate::service::SCAN_BUDGET`]).
    pub scanned: usize,
}

/// Runs a search from its parameters (also for the dashboard).
pub(crate) fn run_search(
    service: &crate::service::Service,
    params: &SearchParams,
) -> Result<(DeviceQuery, crate::service::SearchPage), OperatorError> {
    let saved = params
        .query
        .as_deref()
        .map(|name| service.saved_query(name))
        .transpose()?;
    let query = params.to_query(saved)?;
    let limit = params.limit.unwrap_or(50).clamp(1, super::MAX_PAGE);
    let page = service.search(&query, params.after.as_deref(), limit)?;
    Ok((query, page))
}

/// Devices matching every filter, walked from the device index (see the README).
#[utoipa::path(get, path = "/v1/search", tag = "devices", params(SearchParams), responses((status = 200, description = "OK", body = SearchView), super::Problems))]
pub(super) async fn search(
    State(api): State<Api>,
    Query(params): Query<SearchParams>,
) -> ApiResult<SearchView> {
    let (_, page) = run_search(&api.control.service, &params)?;
    Ok(axum::Json(SearchView {
        devices: page.devices.iter().map(|d| view(&api, d)).collect(),
        next: page.next,
        scanned: page.scanned,
    }))
}

/// Changes the device's tags and attributes.
#[utoipa::path(post, path = "/v1/devices/{device}/labels", tag = "devices", params(("device" = String, Path, description = "MAKER/SERIAL, or a serial only one manufacturer has")), request_body = Labels, responses((status = 200, description = "OK", body = DeviceView), super::Problems))]
pub(super) async fn label(
    State(api): State<Api>,
    Path(device): Path<String>,
    axum::Json(body): axum::Json<Labels>,
) -> ApiResult<DeviceView> {
    let id = api.control.service.resolve(&device)?;
    let record = api.control.service.label(&id, &body).await?;
    Ok(axum::Json(view(&api, &record)))
}

/// Saved queries, by name.
#[utoipa::path(get, path = "/v1/queries", tag = "devices", responses((status = 200, description = "OK", body = std::collections::BTreeMap<String, DeviceQuery>), super::Problems))]
pub(super) async fn list_queries(
    State(api): State<Api>,
) -> ApiResult<std::collections::BTreeMap<String, DeviceQuery>> {
    Ok(axum::Json(api.control.service.saved_queries()?))
}

/// Saves a query under a name (campaigns and the console can name it).
#[utoipa::path(put, path = "/v1/queries/{name}", tag = "devices", params(("name" = String, Path, description = "The query's name")), request_body = DeviceQuery, responses((status = 200, description = "OK", body = DeviceQuery), super::Problems))]
pub(super) async fn save_query(
    State(api): State<Api>,
    Path(name): Path<String>,
    axum::Json(body): axum::Json<DeviceQuery>,
) -> ApiResult<DeviceQuery> {
    api.control.service.save_query(&name, &body).await?;
    Ok(axum::Json(body))
}

/// The encrypted application data the device handed back before its wipe (an age file).
#[utoipa::path(get, path = "/v1/devices/{device}/exported-data", tag = "orders", params(("device" = String, Path, description = "MAKER/SERIAL, or a serial only one manufacturer has")), responses((status = 200, description = "The age file", content_type = "application/octet-stream", body = super::Binary), super::Problems))]
pub(super) async fn exported_data(
    State(api): State<Api>,
    Path(device): Path<String>,
) -> Result<Response, OperatorError> {
    let id = api.control.service.resolve(&device)?;
    let data = api.control.service.exported_data(&id)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

/// The device's history for anyone to verify offline with the owner root (CBOR; see
/// `onboarder device history`).
#[utoipa::path(get, path = "/v1/devices/{device}/history", tag = "audit", params(("device" = String, Path, description = "MAKER/SERIAL, or a serial only one manufacturer has")), responses((status = 200, description = "The history bundle", content_type = "application/cbor", body = super::Binary), super::Problems))]
pub(super) async fn history(
    State(api): State<Api>,
    Path(device): Path<String>,
) -> Result<Response, OperatorError> {
    let id = api.control.service.resolve(&device)?;
    let bundle = api.control.service.history(&id)?;
    Ok((
        [(header::CONTENT_TYPE, "application/cbor")],
        protocol::cbor::to_vec(&bundle),
    )
        .into_response())
}
