//! A client of the admin API, used by the CLI subcommands.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use thiserror::Error;

use super::ImportReport;

/// Vouchers per bundle when a list is imported: a few MiB each, far under the body limit.
pub const VOUCHERS_PER_BUNDLE: usize = 10_000;
use super::api::{QuarantineRequest, RevokeRequest, RolloverRequest, RotateRequest};
use super::views::{AnchorView, AuditEntryView, DeviceView};
use crate::audit::ChainSummary;
use crate::config::Config;
use crate::control::{RolloverReport, RootStatus};
use crate::service::{Crl, OrderReport, RotationStatus};

/// Largest API response read.
const MAX_RESPONSE: u64 = 256 * 1024 * 1024;

/// Why a request to the admin API failed.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum ClientError {
    /// The settings of the data directory could not be read.
    #[error("reading the onboarder settings in {dir}: {detail}")]
    Settings {
        /// The data directory.
        dir: String,
        /// Why.
        detail: String,
    },
    /// The onboarder could not be reached.
    #[error("is the onboarder running at {base}? {detail}")]
    Unreachable {
        /// Its address.
        base: String,
        /// Why.
        detail: String,
    },
    /// The onboarder refused the request.
    #[error("{message} (HTTP {status})")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The onboarder's explanation.
        message: String,
    },
    /// The answer could not be read.
    #[error("reading the API response: {0}")]
    Decode(String),
}

impl ClientError {
    /// Whether trying again later may work (the onboarder is restarting, or busy).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Refused { status, .. } => *status == 503,
            _ => false,
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// An authenticated connection to a running onboarder's admin API.
#[derive(Clone)]
pub struct ApiClient {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl ApiClient {
    /// A client for the onboarder whose data directory is `dir`.
    pub fn for_data_dir(dir: &Path) -> Result<ApiClient> {
        let settings = |detail: String| ClientError::Settings {
            dir: dir.display().to_string(),
            detail,
        };
        let config = Config::load(dir).map_err(|e| settings(e.to_string()))?;
        let token = crate::pki::token(dir).map_err(|e| settings(e.to_string()))?;
        Ok(ApiClient::new(
            &format!("http://{}", config.api_listen),
            token,
        ))
    }

    /// A client for the API at `base` (for example `http://127.0.0.1:4480`).
    pub fn new(base: &str, token: String) -> ApiClient {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .new_agent();
        ApiClient {
            agent,
            base: base.trim_end_matches('/').to_string(),
            token,
        }
    }

    fn read<T: DeserializeOwned>(
        &self,
        mut response: ureq::http::Response<ureq::Body>,
    ) -> Result<T> {
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_string()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("detail").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(body);
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_str(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .map_err(|e| self.unreachable(e))?;
        self.read(response)
    }

    fn unreachable(&self, e: ureq::Error) -> ClientError {
        ClientError::Unreachable {
            base: self.base.clone(),
            detail: e.to_string(),
        }
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: &[u8], content_type: &str) -> Result<T> {
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", content_type)
            .send(body)
            .map_err(|e| self.unreachable(e))?;
        self.read(response)
    }

    /// Imports manufacturer anchors.
    pub fn import_anchor(&self, import: &super::AnchorImport) -> Result<Vec<AnchorView>> {
        self.post_json("/v1/anchors", import)
    }

    /// Lists manufacturer anchors.
    pub fn anchors(&self) -> Result<Vec<AnchorView>> {
        self.get("/v1/anchors")
    }

    /// Imports a voucher bundle.
    pub fn import_vouchers(&self, bundle: &[u8]) -> Result<ImportReport> {
        self.post("/v1/vouchers", bundle, "application/cbor")
    }

    /// Imports `vouchers`, however many, in bundles of at most [`VOUCHERS_PER_BUNDLE`] (a
    /// bundle is bounded, [`protocol::voucher::MAX_BUNDLE`]: 100,000 vouchers do not fit in
    /// one); the reports added up. Stops at the first bundle refused: what came before it is
    /// imported, and importing again is harmless (vouchers on file are counted unchanged).
    pub fn import_voucher_list(&self, vouchers: &[Vec<u8>]) -> Result<ImportReport> {
        let mut total = ImportReport::default();
        for batch in vouchers.chunks(VOUCHERS_PER_BUNDLE) {
            total.add(self.import_vouchers(&protocol::voucher::encode_bundle(batch))?);
        }
        Ok(total)
    }

    /// All devices, page by page.
    pub fn devices(&self) -> Result<Vec<DeviceView>> {
        let mut out: Vec<DeviceView> = Vec::new();
        loop {
            let path = match out.last() {
                Some(last) => format!(
                    "/v1/devices?limit={}&after={}",
                    super::api::MAX_PAGE,
                    segment(&last.id.to_string())
                ),
                None => format!("/v1/devices?limit={}", super::api::MAX_PAGE),
            };
            let page: Vec<DeviceView> = self.get(&path)?;
            let done = page.len() < super::api::MAX_PAGE;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    /// One device (`MAKER/SERIAL`, or a serial only one manufacturer has).
    pub fn device(&self, device: &str) -> Result<DeviceView> {
        self.get(&format!("/v1/devices/{}", segment(device)))
    }

    /// Audit entries from `from`, or the newest `limit` when `from` is `None`.
    pub fn audit(&self, from: Option<u64>, limit: usize) -> Result<Vec<AuditEntryView>> {
        match from {
            Some(from) => self.get(&format!("/v1/audit?from={from}&limit={limit}")),
            None => self.get(&format!("/v1/audit?limit={limit}")),
        }
    }

    fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.post(path, &body, "application/json")
    }

    /// One page of the devices matching `params` (see `GET /v1/search`).
    pub fn search(&self, params: &super::api::SearchParams) -> Result<super::api::SearchView> {
        let value = serde_json::to_value(params).map_err(|e| ClientError::Decode(e.to_string()))?;
        let pairs: Vec<String> = value
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| match v {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(format!("{k}={}", segment(s))),
                other => Some(format!("{k}={}", segment(&other.to_string()))),
            })
            .collect();
        self.get(&format!("/v1/search?{}", pairs.join("&")))
    }

    /// Changes a device's tags and attributes.
    pub fn label(&self, device: &str, labels: &crate::core::query::Labels) -> Result<DeviceView> {
        self.post_json(&format!("/v1/devices/{}/labels", segment(device)), labels)
    }

    fn put_json<T: DeserializeOwned>(&self, path: &str, body: &impl serde::Serialize) -> Result<T> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let response = self
            .agent
            .put(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|e| self.unreachable(e))?;
        self.read(response)
    }

    /// Saves a query under `name`.
    pub fn save_query(
        &self,
        name: &str,
        query: &crate::core::query::DeviceQuery,
    ) -> Result<crate::core::query::DeviceQuery> {
        self.put_json(&format!("/v1/queries/{}", segment(name)), query)
    }

    /// Sets the support period of device class `class`.
    pub fn set_support(
        &self,
        class: &str,
        request: &super::api::SupportRequest,
    ) -> Result<crate::core::support::SupportPeriod> {
        self.put_json(&format!("/v1/support/{}", segment(class)), request)
    }

    /// Support periods.
    pub fn support(&self) -> Result<Vec<crate::core::support::SupportPeriod>> {
        self.get("/v1/support")
    }

    /// Imports a VEX document (OpenVEX or CycloneDX JSON).
    pub fn import_vex(&self, document: &[u8]) -> Result<crate::service::VexReport> {
        self.post("/v1/vex", document, "application/json")
    }

    /// Per vulnerability and affected release: devices, fix and the campaign that would fix.
    pub fn vulnerabilities(&self) -> Result<Vec<crate::service::FixPlan>> {
        self.get("/v1/vulnerabilities")
    }

    /// What a device is exposed to.
    pub fn device_vulnerabilities(
        &self,
        device: &str,
    ) -> Result<crate::core::label::VulnerabilityFacts> {
        self.get(&format!("/v1/devices/{}/vulnerabilities", segment(device)))
    }

    /// A device's live label and its URL.
    pub fn device_label(&self, device: &str) -> Result<crate::core::label::Label> {
        self.get(&format!("/v1/devices/{}/label", segment(device)))
    }

    /// The label settings.
    pub fn label_settings(&self) -> Result<crate::core::label::LabelSettings> {
        self.get("/v1/labels/settings")
    }

    /// Sets the label settings.
    pub fn set_label_settings(
        &self,
        settings: &crate::core::label::LabelSettings,
    ) -> Result<crate::core::label::LabelSettings> {
        self.put_json("/v1/labels/settings", settings)
    }

    /// Saved queries, by name.
    pub fn queries(
        &self,
    ) -> Result<std::collections::BTreeMap<String, crate::core::query::DeviceQuery>> {
        self.get("/v1/queries")
    }

    /// Revokes a device's certificates and quarantines it.
    pub fn revoke(&self, device: &str, reason: certs::crl::Reason) -> Result<DeviceView> {
        self.post_json(
            &format!("/v1/devices/{}/revoke", segment(device)),
            &RevokeRequest { reason },
        )
    }

    /// Quarantines a device.
    pub fn quarantine(&self, device: &str, reason: &str) -> Result<DeviceView> {
        self.post_json(
            &format!("/v1/devices/{}/quarantine", segment(device)),
            &QuarantineRequest {
                reason: reason.to_string(),
            },
        )
    }

    /// Puts a device stuck in onboarding back to expected.
    pub fn reset_onboarding(&self, device: &str, reason: &str) -> Result<DeviceView> {
        self.post_json(
            &format!("/v1/devices/{}/reset-onboarding", segment(device)),
            &QuarantineRequest {
                reason: reason.to_string(),
            },
        )
    }

    /// Orders a rotation.
    pub fn rotate(&self, request: &RotateRequest) -> Result<OrderReport> {
        self.post_json("/v1/rotations", request)
    }

    /// Progress of the rotations ordered since `since`.
    pub fn rotation_status(&self, since: u64) -> Result<RotationStatus> {
        self.get(&format!("/v1/rotations?since={since}"))
    }

    /// Rolls the issuing CA over.
    pub fn rollover(&self, rate: Option<u32>) -> Result<RolloverReport> {
        self.post_json("/v1/ca/rollover", &RolloverRequest { rate })
    }

    /// Starts an owner-root rollover.
    pub fn root_rollover(&self) -> Result<RootStatus> {
        self.post_json("/v1/ca/root-rollover", &serde_json::json!({}))
    }

    /// Where the owner roots stand.
    pub fn roots(&self) -> Result<RootStatus> {
        self.get("/v1/ca/roots")
    }

    /// The CRLs last published.
    pub fn crls(&self) -> Result<Vec<Crl>> {
        self.get("/v1/crls")
    }

    /// Imports a firmware-signing key.
    pub fn import_firmware_key(
        &self,
        vendor: &str,
        pem: &str,
    ) -> Result<crate::core::release::FirmwareKey> {
        self.post_json(
            "/v1/firmware/keys",
            &super::api::FirmwareKeyRequest {
                vendor: vendor.to_string(),
                pem: pem.to_string(),
            },
        )
    }

    /// Uploads a release.
    pub fn upload_release(
        &self,
        manifest: &[u8],
        image: &[u8],
        sbom: Option<&[u8]>,
    ) -> Result<super::api::ReleaseView> {
        let parts: Vec<&serde_bytes::Bytes> = [Some(manifest), Some(image), sbom]
            .into_iter()
            .flatten()
            .map(serde_bytes::Bytes::new)
            .collect();
        let body = protocol::cbor::to_vec(&parts);
        self.post("/v1/firmware/releases", &body, "application/cbor")
    }

    /// Lists releases.
    pub fn releases(&self) -> Result<Vec<super::api::ReleaseView>> {
        self.get("/v1/firmware/releases")
    }

    /// Creates a campaign.
    pub fn create_campaign(
        &self,
        spec: &crate::service::CampaignSpec,
    ) -> Result<crate::core::campaign::Campaign> {
        self.post_json("/v1/campaigns", spec)
    }

    /// Gives an order about a campaign.
    pub fn order_campaign(
        &self,
        id: &str,
        order: crate::core::campaign::CampaignOrder,
    ) -> Result<crate::core::campaign::Campaign> {
        self.post(
            &format!("/v1/campaigns/{id}/{order}"),
            b"",
            "application/json",
        )
    }

    /// Where a campaign stands (per device too with `devices`).
    pub fn campaign_status(
        &self,
        id: &str,
        devices: bool,
    ) -> Result<crate::service::CampaignStatus> {
        self.get(&format!("/v1/campaigns/{id}?devices={devices}"))
    }

    /// Orders devices to wipe themselves.
    /// With `export_to`, they hand their application data back first, encrypted to that age
    /// recipient.
    pub fn decommission(
        &self,
        devices: Vec<String>,
        method: protocol::attestation::WipeMethod,
        export_to: Option<String>,
    ) -> Result<OrderReport> {
        self.post_json(
            "/v1/decommissions",
            &super::api::DecommissionRequest {
                devices,
                method,
                export_to,
            },
        )
    }

    /// The encrypted application data a device handed back before its wipe.
    pub fn exported_data(&self, device: &str) -> Result<Vec<u8>> {
        self.bytes(&format!("/v1/devices/{}/exported-data", segment(device)))
    }

    /// A device's history bundle (CBOR).
    pub fn history(&self, device: &str) -> Result<Vec<u8>> {
        self.bytes(&format!("/v1/devices/{}/history", segment(device)))
    }

    /// The bytes `path` answers with (at most [`protocol::message::MAX_EXPORT`]).
    fn bytes(&self, path: &str) -> Result<Vec<u8>> {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = response.body_mut().read_to_string().unwrap_or_default();
            return Err(ClientError::Refused {
                status,
                message: serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string))
                    .unwrap_or(body),
            });
        }
        response
            .body_mut()
            .with_config()
            .limit(protocol::message::MAX_EXPORT)
            .read_to_vec()
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Decommissions a device without its attestation.
    pub fn force_decommission(&self, device: &str, reason: &str) -> Result<DeviceView> {
        self.post_json(
            &format!("/v1/devices/{}/decommission/force", segment(device)),
            &QuarantineRequest {
                reason: reason.to_string(),
            },
        )
    }

    /// The certificate of sanitization of a device.
    pub fn sanitization(
        &self,
        device: &str,
    ) -> Result<crate::core::sanitization::SanitizationCertificate> {
        self.get(&format!("/v1/devices/{}/sanitization", segment(device)))
    }

    /// Devices per state and live sessions.
    pub fn stats(&self) -> Result<super::api::Stats> {
        self.get("/v1/stats")
    }

    /// The DER CRL of issuing CA generation `generation` (the public endpoint).
    pub fn crl(&self, generation: u32) -> Result<Vec<u8>> {
        let mut response = self
            .agent
            .get(format!("{}/crl/issuing-ca-{generation}.crl", self.base))
            .call()
            .map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return Err(ClientError::Refused {
                status: response.status().as_u16(),
                message: format!("no CRL for generation {generation}"),
            });
        }
        response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Verifies the audit chain.
    pub fn verify_audit(&self) -> Result<ChainSummary> {
        self.get("/v1/audit/verify")
    }

    /// `/metrics`: the text Prometheus scrapes.
    pub fn metrics(&self) -> Result<String> {
        let mut response = self
            .agent
            .get(format!("{}/metrics", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return Err(ClientError::Refused {
                status: response.status().as_u16(),
                message: "metrics refused".into(),
            });
        }
        response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_string()
            .map_err(|e| ClientError::Decode(e.to_string()))
    }
}

/// A device name as one URL path segment or query value. Names are maker ids, manufacturer
/// names and serials (letters, digits, `-`, `.`) joined by `/`; anything else is escaped too.
fn segment(name: &str) -> String {
    use std::fmt::Write;
    name.bytes()
        .fold(String::with_capacity(name.len()), |mut s, b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' {
                s.push(b as char);
            } else {
                let _ = write!(s, "%{b:02X}");
            }
            s
        })
}
