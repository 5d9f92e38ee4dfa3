//! Routes about the fleet as a whole: rotations, the CA rollover, CRLs and the counters.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::devices::resolve_all;
use super::{Api, ApiResult, error, off_workers};
use crate::control::{RolloverReport, RootStatus};
use crate::operator::OperatorError;
use crate::service::{Crl, OrderReport, RotationStatus};

/// Body of `POST /v1/rotations`.
#[derive(utoipa::ToSchema, Debug, Deserialize, Serialize, Default)]
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

/// Orders devices (or every active one) to re-key.
#[utoipa::path(post, path = "/v1/rotations", tag = "orders", request_body = RotateRequest, responses((status = 200, description = "OK", body = OrderReport), super::Problems))]
pub(super) async fn rotate(
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
#[derive(utoipa::IntoParams, Debug, Deserialize, Serialize, Default)]
#[into_params(parameter_in = Query)]
pub struct Since {
    /// Only rotations ordered at or after this time.
    pub since: Option<u64>,
}

/// How the rotations ordered since a time went.
#[utoipa::path(get, path = "/v1/rotations", tag = "orders", params(Since), responses((status = 200, description = "OK", body = RotationStatus), super::Problems))]
pub(super) async fn rotation_status(
    State(api): State<Api>,
    Query(q): Query<Since>,
) -> ApiResult<RotationStatus> {
    off_workers(&api, move |control| {
        control.service.rotation_status(q.since.unwrap_or(0))
    })
    .await
}

/// Body of `POST /v1/ca/rollover`.
#[derive(utoipa::ToSchema, Debug, Deserialize, Serialize, Default)]
pub struct RolloverRequest {
    /// Rotation commands pushed per second at most.
    #[serde(default)]
    pub rate: Option<u32>,
}

/// A new issuing CA generation; every device re-keys onto it.
#[utoipa::path(post, path = "/v1/ca/rollover", tag = "ca", request_body = RolloverRequest, responses((status = 200, description = "OK", body = RolloverReport), super::Problems))]
pub(super) async fn rollover(
    State(api): State<Api>,
    axum::Json(body): axum::Json<RolloverRequest>,
) -> ApiResult<RolloverReport> {
    Ok(axum::Json(api.control.rollover(body.rate).await?))
}

/// Starts an owner-root rollover.
#[utoipa::path(post, path = "/v1/ca/root-rollover", tag = "ca", responses((status = 200, description = "OK", body = RootStatus), super::Problems))]
pub(super) async fn root_rollover(State(api): State<Api>) -> ApiResult<RootStatus> {
    Ok(axum::Json(api.control.root_rollover().await?))
}

/// The owner roots and the rollover under way, with what holds it.
#[utoipa::path(get, path = "/v1/ca/roots", tag = "ca", responses((status = 200, description = "OK", body = RootStatus), super::Problems))]
pub(super) async fn roots(State(api): State<Api>) -> ApiResult<RootStatus> {
    off_workers(&api, |control| control.root_status()).await
}

/// The CRLs last published.
#[utoipa::path(get, path = "/v1/crls", tag = "ca", responses((status = 200, description = "OK", body = Vec<Crl>), super::Problems))]
pub(super) async fn list_crls(State(api): State<Api>) -> ApiResult<Vec<Crl>> {
    Ok(axum::Json(api.control.crls()))
}

/// A CRL, DER (no token needed).
#[utoipa::path(get, path = "/crl/{file}", tag = "ca", params(("file" = String, Path, description = "issuing-ca-N.crl")), responses((status = 200, description = "DER", body = super::Binary, content_type = "application/pkix-crl"), super::Problems))]
pub(super) async fn crl(State(api): State<Api>, Path(file): Path<String>) -> Response {
    match api.control.crl_file(&file) {
        Some(der) => ([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no CRL {file}")),
    }
}

/// Counters for dashboards and load tests.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Stats {
    /// Devices per lifecycle state.
    pub states: std::collections::BTreeMap<String, u64>,
    /// Live operational sessions.
    pub sessions: usize,
    /// Bytes of incomplete device requests held now.
    pub frame_bytes_held: usize,
    /// Firmware chunks being served now (at most 64, over every transport).
    pub firmware_chunks_in_flight: usize,
    /// Refusals and shed load.
    #[serde(flatten)]
    pub metrics: crate::metrics::MetricsSnapshot,
}

/// Devices per state, live sessions, refusals and shed load.
#[utoipa::path(get, path = "/v1/stats", tag = "fleet", responses((status = 200, description = "OK", body = Stats), super::Problems))]
pub(super) async fn stats(State(api): State<Api>) -> ApiResult<Stats> {
    let states = api.control.service.state_counts()?;
    Ok(axum::Json(Stats {
        states,
        sessions: api.control.sessions.len(),
        frame_bytes_held: api.control.budgets.frames.held(),
        firmware_chunks_in_flight: api.control.budgets.chunks.in_flight(),
        metrics: api.control.service.metrics().snapshot(),
    }))
}
