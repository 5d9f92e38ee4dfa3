//! Routes about firmware: signing keys, releases and campaigns.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{Api, ApiResult, off_workers};
use crate::core::campaign::{Campaign, CampaignOrder};
use crate::core::release::{FirmwareKey, Release};
use crate::operator::OperatorError;
use crate::service::{CampaignSpec, CampaignStatus};

/// Body of `POST /v1/firmware/keys`.
#[derive(utoipa::ToSchema, Debug, Deserialize, Serialize)]
pub struct FirmwareKeyRequest {
    /// Vendor id the key signs for.
    pub vendor: String,
    /// The key, PEM `PUBLIC KEY`.
    pub pem: String,
}

/// Imports a manufacturer's firmware-signing key (Ed25519).
#[utoipa::path(post, path = "/v1/firmware/keys", tag = "firmware", request_body = FirmwareKeyRequest, responses((status = 200, description = "OK", body = FirmwareKey), super::Problems))]
pub(super) async fn import_firmware_key(
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

/// Imported firmware-signing keys.
#[utoipa::path(get, path = "/v1/firmware/keys", tag = "firmware", responses((status = 200, description = "OK", body = Vec<FirmwareKey>), super::Problems))]
pub(super) async fn list_firmware_keys(State(api): State<Api>) -> ApiResult<Vec<FirmwareKey>> {
    Ok(axum::Json(api.control.service.firmware_keys()?))
}

/// A release as listed (without its manifest bytes).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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
    /// The SBOM's format (`cyclonedx`, `spdx`), if the release has one.
    #[serde(default)]
    pub sbom_format: Option<String>,
    /// The SBOM's SHA-256, hex.
    #[serde(default)]
    pub sbom_sha256: Option<String>,
    /// The package URL VEX statements name it by.
    #[serde(default)]
    pub purl: String,
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
            sbom_format: r.sbom.as_ref().map(|s| s.format.clone()),
            sbom_sha256: r.sbom.as_ref().map(|s| certs::inspect::hex(&s.digest)),
            purl: crate::core::vex::purl(r),
        }
    }
}

/// Uploads a release: CBOR [signed manifest, image] or [signed manifest, image, SBOM]; the SBOM
/// must be the document the manifest names (its SHA-256).
#[utoipa::path(post, path = "/v1/firmware/releases", tag = "firmware", request_body(content = super::Binary, content_type = "application/cbor"), responses((status = 200, description = "OK", body = ReleaseView), super::Problems))]
pub(super) async fn upload_release(State(api): State<Api>, body: Bytes) -> ApiResult<ReleaseView> {
    let parts: Vec<serde_bytes::ByteBuf> = protocol::cbor::from_slice(&body, body.len())
        .map_err(|e| OperatorError::BadInput(format!("upload body: {e}")))?;
    let (manifest, image, sbom) = match parts.as_slice() {
        [m, i] => (m, i, None),
        [m, i, s] => (m, i, Some(s.as_slice())),
        _ => {
            return Err(OperatorError::BadInput(
                "upload body: [manifest, image] or [manifest, image, SBOM]".into(),
            ));
        }
    };
    let release = api
        .control
        .service
        .upload_release(manifest, image, sbom)
        .await?;
    Ok(axum::Json(ReleaseView::from(&release)))
}

fn sbom_response(info: &crate::core::sbom::SbomInfo, document: Vec<u8>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, info.media_type())],
        document,
    )
        .into_response()
}

/// A release's SBOM, as the manufacturer signed for it.
#[utoipa::path(get, path = "/v1/firmware/releases/{release}/sbom", tag = "firmware", params(("release" = String, Path, description = "The release: its image digest (hex) or its version")), responses((status = 200, description = "CycloneDX or SPDX JSON", content((Object = "application/vnd.cyclonedx+json"), (Object = "application/spdx+json"))), super::Problems))]
pub(super) async fn release_sbom(
    State(api): State<Api>,
    Path(release): Path<String>,
) -> Result<Response, OperatorError> {
    let service = &api.control.service;
    let (info, document) = service.release_sbom(&service.find_release(&release)?)?;
    Ok(sbom_response(&info, document))
}

/// The SBOM of the release a device runs now.
#[utoipa::path(get, path = "/v1/devices/{device}/sbom", tag = "devices", params(("device" = String, Path, description = "MAKER/SERIAL, or a serial only one manufacturer has")), responses((status = 200, description = "CycloneDX or SPDX JSON", content((Object = "application/vnd.cyclonedx+json"), (Object = "application/spdx+json"))), super::Problems))]
pub(super) async fn device_sbom(
    State(api): State<Api>,
    Path(device): Path<String>,
) -> Result<Response, OperatorError> {
    let service = &api.control.service;
    let id = service.resolve(&device)?;
    let (info, document) = service.release_sbom(&service.running_release(&id)?)?;
    Ok(sbom_response(&info, document))
}

/// Releases.
#[utoipa::path(get, path = "/v1/firmware/releases", tag = "firmware", responses((status = 200, description = "OK", body = Vec<ReleaseView>), super::Problems))]
pub(super) async fn list_releases(State(api): State<Api>) -> ApiResult<Vec<ReleaseView>> {
    Ok(axum::Json(
        api.control
            .service
            .releases()?
            .iter()
            .map(ReleaseView::from)
            .collect(),
    ))
}

/// Creates a campaign (start it with its start order).
#[utoipa::path(post, path = "/v1/campaigns", tag = "firmware", request_body = CampaignSpec, responses((status = 200, description = "OK", body = Campaign), super::Problems))]
pub(super) async fn create_campaign(
    State(api): State<Api>,
    axum::Json(spec): axum::Json<CampaignSpec>,
) -> ApiResult<Campaign> {
    Ok(axum::Json(api.control.service.create_campaign(spec).await?))
}

/// Campaigns.
#[utoipa::path(get, path = "/v1/campaigns", tag = "firmware", responses((status = 200, description = "OK", body = Vec<Campaign>), super::Problems))]
pub(super) async fn list_campaigns(State(api): State<Api>) -> ApiResult<Vec<Campaign>> {
    Ok(axum::Json(api.control.service.campaigns()?))
}

/// Query of `GET /v1/campaigns/{id}`.
#[derive(utoipa::IntoParams, Debug, Deserialize, Serialize, Default)]
#[into_params(parameter_in = Query)]
pub struct CampaignQuery {
    /// Include every device (reads their records).
    #[serde(default)]
    pub devices: bool,
}

/// Progress per wave, and per device with `devices=true`.
#[utoipa::path(get, path = "/v1/campaigns/{id}", tag = "firmware", params(("id" = String, Path, description = "Campaign id"), CampaignQuery), responses((status = 200, description = "OK", body = CampaignStatus), super::Problems))]
pub(super) async fn campaign_status(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<CampaignQuery>,
) -> ApiResult<CampaignStatus> {
    off_workers(&api, move |control| {
        control.service.campaign_status(&id, q.devices)
    })
    .await
}

/// Starts, pauses, resumes or aborts a campaign.
#[utoipa::path(post, path = "/v1/campaigns/{id}/{order}", tag = "firmware", params(("id" = String, Path, description = "Campaign id"), ("order" = String, Path, description = "start, pause, resume or abort")), responses((status = 200, description = "OK", body = Campaign), super::Problems))]
pub(super) async fn order_campaign(
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
