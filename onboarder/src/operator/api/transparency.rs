//! What the owner publishes about its devices' security: support periods by class.

use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use super::{Api, ApiResult};
use crate::core::support::{self, SupportPeriod};
use crate::operator::OperatorError;

/// A support period as operators set it.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupportRequest {
    /// The day security updates end (`YYYY-MM-DD`, UTC): from its start the class is
    /// unsupported.
    pub ends_on: String,
    /// Days ahead that devices and operators are told (default 90).
    #[serde(default = "SupportRequest::default_notice")]
    pub notice_days: u32,
}

impl SupportRequest {
    fn default_notice() -> u32 {
        90
    }
}

/// Support periods, by class.
#[utoipa::path(get, path = "/v1/support", tag = "transparency", responses((status = 200, description = "OK", body = Vec<SupportPeriod>), super::Problems))]
pub(super) async fn list_support(State(api): State<Api>) -> ApiResult<Vec<SupportPeriod>> {
    Ok(axum::Json(
        api.control
            .service
            .support_periods()
            .into_values()
            .collect(),
    ))
}

/// Sets the support period of a device class; its devices are told once the notice period
/// has begun (at once, if it has).
#[utoipa::path(put, path = "/v1/support/{class}", tag = "transparency", params(("class" = String, Path, description = "The device class (model)")), request_body = SupportRequest, responses((status = 200, description = "OK", body = SupportPeriod), super::Problems))]
pub(super) async fn set_support(
    State(api): State<Api>,
    Path(class): Path<String>,
    axum::Json(body): axum::Json<SupportRequest>,
) -> ApiResult<SupportPeriod> {
    let ends_on = support::parse_date(&body.ends_on).ok_or_else(|| {
        OperatorError::BadInput(format!("ends_on {:?}: a day as YYYY-MM-DD", body.ends_on))
    })?;
    let period = SupportPeriod {
        class,
        ends_on,
        notice_days: body.notice_days,
        set_at: 0,
        source: support::SupportSource::Operator,
    };
    Ok(axum::Json(api.control.set_support(period).await?))
}

/// Imports a VEX document (OpenVEX or CycloneDX JSON) about releases on record.
#[utoipa::path(post, path = "/v1/vex", tag = "transparency", request_body(content = super::Binary, content_type = "application/json"), responses((status = 200, description = "OK", body = crate::service::VexReport), super::Problems))]
pub(super) async fn import_vex(
    State(api): State<Api>,
    body: axum::body::Bytes,
) -> ApiResult<crate::service::VexReport> {
    Ok(axum::Json(api.control.service.import_vex(&body).await?))
}

/// Every VEX statement on record.
#[utoipa::path(get, path = "/v1/vex", tag = "transparency", responses((status = 200, description = "OK", body = Vec<crate::core::vex::Statement>), super::Problems))]
pub(super) async fn list_vex(
    State(api): State<Api>,
) -> ApiResult<Vec<crate::core::vex::Statement>> {
    Ok(axum::Json(api.control.service.vex_statements()?))
}

/// For each vulnerability and affected release: the devices on it, the release that fixes it
/// and the campaign that would.
#[utoipa::path(get, path = "/v1/vulnerabilities", tag = "transparency", responses((status = 200, description = "OK", body = Vec<crate::service::FixPlan>), super::Problems))]
pub(super) async fn vulnerabilities(
    State(api): State<Api>,
) -> ApiResult<Vec<crate::service::FixPlan>> {
    Ok(axum::Json(api.control.service.fix_plans()?))
}

/// What a device is exposed to, from the release it runs.
#[utoipa::path(get, path = "/v1/devices/{device}/vulnerabilities", tag = "transparency", params(("device" = String, Path, description = "MAKER/SERIAL, or a serial only one manufacturer has")), responses((status = 200, description = "OK", body = crate::core::label::VulnerabilityFacts), super::Problems))]
pub(super) async fn device_vulnerabilities(
    State(api): State<Api>,
    Path(device): Path<String>,
) -> ApiResult<crate::core::label::VulnerabilityFacts> {
    let id = api.control.service.resolve(&device)?;
    Ok(axum::Json(api.control.service.device_vulnerabilities(&id)?))
}

/// The device's live label (what its public page shows) and its URL.
#[utoipa::path(get, path = "/v1/devices/{device}/label", tag = "transparency", params(("device" = String, Path, description = "MAKER/SERIAL, or a serial only one manufacturer has")), responses((status = 200, description = "OK", body = crate::core::label::Label), super::Problems))]
pub(super) async fn device_label(
    State(api): State<Api>,
    Path(device): Path<String>,
) -> ApiResult<crate::core::label::Label> {
    let id = api.control.service.resolve(&device)?;
    Ok(axum::Json(api.control.service.label_of(&id)?))
}

/// The owner's label settings: where labels are published and what they show.
#[utoipa::path(get, path = "/v1/labels/settings", tag = "transparency", responses((status = 200, description = "OK", body = crate::core::label::LabelSettings), super::Problems))]
pub(super) async fn label_settings(
    State(api): State<Api>,
) -> ApiResult<crate::core::label::LabelSettings> {
    Ok(axum::Json(api.control.service.label_settings()?))
}

/// Sets the owner's label settings.
#[utoipa::path(put, path = "/v1/labels/settings", tag = "transparency", request_body = crate::core::label::LabelSettings, responses((status = 200, description = "OK", body = crate::core::label::LabelSettings), super::Problems))]
pub(super) async fn set_label_settings(
    State(api): State<Api>,
    axum::Json(body): axum::Json<crate::core::label::LabelSettings>,
) -> ApiResult<crate::core::label::LabelSettings> {
    Ok(axum::Json(
        api.control.service.set_label_settings(body).await?,
    ))
}
