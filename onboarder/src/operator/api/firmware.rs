//! Routes about firmware: signing keys, releases and campaigns.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::{Api, ApiResult};
use crate::core::campaign::{Campaign, CampaignOrder};
use crate::core::release::{FirmwareKey, Release};
use crate::operator::OperatorError;
use crate::service::{CampaignSpec, CampaignStatus};

/// Body of `POST /v1/firmware/keys`.
#[derive(Debug, Deserialize, Serialize)]
pub struct FirmwareKeyRequest {
    /// Vendor id the key signs for.
    pub vendor: String,
    /// The key, PEM `PUBLIC KEY`.
    pub pem: String,
}

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

pub(super) async fn list_firmware_keys(State(api): State<Api>) -> ApiResult<Vec<FirmwareKey>> {
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

pub(super) async fn upload_release(State(api): State<Api>, body: Bytes) -> ApiResult<ReleaseView> {
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

pub(super) async fn create_campaign(
    State(api): State<Api>,
    axum::Json(spec): axum::Json<CampaignSpec>,
) -> ApiResult<Campaign> {
    Ok(axum::Json(api.control.service.create_campaign(spec).await?))
}

pub(super) async fn list_campaigns(State(api): State<Api>) -> ApiResult<Vec<Campaign>> {
    Ok(axum::Json(api.control.service.campaigns()?))
}

/// Query of `GET /v1/campaigns/{id}`.
#[derive(Debug, Deserialize, Serialize, Default)]
pub struct CampaignQuery {
    /// Include every device (reads their records).
    #[serde(default)]
    pub devices: bool,
}

pub(super) async fn campaign_status(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<CampaignQuery>,
) -> ApiResult<CampaignStatus> {
    Ok(axum::Json(
        api.control.service.campaign_status(&id, q.devices)?,
    ))
}

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
