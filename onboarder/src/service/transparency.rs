//! What the owner publishes about its devices' security: VEX statements and the vulnerability
//! status they give each device (with the campaign that would fix it), and live labels (their
//! settings, their stable URLs, their content).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::{CampaignSpec, OperatorError, Pending, Service, Target};
use crate::audit::AuditEvent;
use crate::core::label::{self, Label, LabelFacts, LabelSettings, VulnerabilityFacts};
use crate::core::query::DeviceQuery;
use crate::core::vex::{self, Statement};
use crate::core::{DeviceId, DeviceState};
use crate::store::Change;

/// Prefix of the named values holding VEX statements (`vex/RELEASE/VULNERABILITY`).
const VEX: &str = "vex/";
/// The named value holding the label settings.
const LABEL_SETTINGS: &str = "label/settings";
/// Bytes of a label token's MAC: enough that label URLs cannot be guessed.
const TOKEN_MAC: usize = 12;

/// What a VEX import kept.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VexReport {
    /// SHA-256 of the document, hex.
    pub document: String,
    /// Statements kept (one per vulnerability and release).
    pub statements: Vec<Statement>,
    /// Products the document names that are no release on record (not kept).
    pub unknown_products: Vec<String>,
}

/// The campaign that would fix the devices exposed to a vulnerability on one release.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixPlan {
    /// The vulnerability.
    pub vulnerability: String,
    /// The release the devices run: its version.
    pub affected_release: String,
    /// The release that fixes it, if one is on record: its version.
    pub fixed_in: Option<String>,
    /// The active devices that run the affected release.
    pub devices: Vec<DeviceId>,
    /// The campaign to create (`POST /v1/campaigns`), when a fix is on record and devices
    /// need it.
    pub campaign: Option<CampaignSpec>,
}

impl Service {
    /// Imports a VEX document (OpenVEX or CycloneDX JSON): its statements about releases on
    /// record replace earlier ones about the same vulnerability and release, in one write.
    pub async fn import_vex(&self, document: &[u8]) -> Result<VexReport, OperatorError> {
        let releases = self.store.releases()?;
        let (statements, unknown) =
            vex::parse(document, &releases).map_err(|e| OperatorError::BadInput(e.to_string()))?;
        let digest = hex::encode(protocol::manifest::sha256(document));
        let mut meta = Vec::new();
        for s in &statements {
            let value =
                serde_json::to_vec(s).map_err(|e| OperatorError::Internal(e.to_string()))?;
            meta.push((format!("{VEX}{}/{}", s.release, s.vulnerability), value));
        }
        self.commit(|now| {
            let change = Change {
                meta: meta.clone(),
                audit: vec![AuditEvent::operator(
                    None,
                    "vex-imported",
                    format!(
                        "sha256:{digest}: {} statements ({})",
                        statements.len(),
                        statements
                            .iter()
                            .map(|s| format!("{} {:?}", s.vulnerability, s.status))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    now,
                )],
                ..Change::default()
            };
            Ok::<_, OperatorError>(Pending::of(change, ()))
        })
        .await?;
        Ok(VexReport {
            document: digest,
            statements,
            unknown_products: unknown,
        })
    }

    /// Every VEX statement on record.
    pub fn vex_statements(&self) -> Result<Vec<Statement>, OperatorError> {
        self.store
            .meta_prefix(VEX)?
            .into_iter()
            .map(|(key, value)| {
                serde_json::from_slice(&value)
                    .map_err(|e| OperatorError::Internal(format!("{key} is corrupt: {e}")))
            })
            .collect()
    }

    /// The vulnerability status of device `id`.
    pub fn device_vulnerabilities(
        &self,
        id: &DeviceId,
    ) -> Result<VulnerabilityFacts, OperatorError> {
        let record = self.device(id)?;
        Ok(label::vulnerabilities(
            &record,
            &self.store.releases()?,
            &self.vex_statements()?,
        ))
    }

    /// For each vulnerability and release it affects: the active devices on that release, the
    /// release that fixes it, and the campaign that would bring them there.
    pub fn fix_plans(&self) -> Result<Vec<FixPlan>, OperatorError> {
        let releases = self.store.releases()?;
        let statements = self.vex_statements()?;
        let mut plans = Vec::new();
        for s in statements.iter().filter(|s| s.status.exposed()) {
            let Some(release) = releases
                .iter()
                .find(|r| hex::encode(&r.digest) == s.release)
            else {
                continue;
            };
            let fix = vex::exposure(release, &releases, &statements)
                .into_iter()
                .find(|e| e.vulnerability == s.vulnerability);
            let query = DeviceQuery {
                class: Some(release.class_id.clone()),
                state: Some(DeviceState::Active),
                ..DeviceQuery::default()
            };
            let devices = self.matching(&query, |r| r.firmware_sequence == release.sequence)?;
            let campaign = fix
                .as_ref()
                .and_then(|e| e.fixed_in_digest.clone())
                .filter(|_| !devices.is_empty())
                .map(|digest| CampaignSpec {
                    release: digest,
                    target: Target::Devices(devices.iter().map(ToString::to_string).collect()),
                    waves: vec![10, 50, 100],
                    failure_threshold: 10,
                    rate: None,
                    wave_timeout: None,
                    over_https: false,
                    signed_urls: false,
                    ramp: None,
                });
            plans.push(FixPlan {
                vulnerability: s.vulnerability.clone(),
                affected_release: release.version.clone(),
                fixed_in: fix.and_then(|e| e.fixed_in),
                devices,
                campaign,
            });
        }
        Ok(plans)
    }

    /// The owner's label settings.
    pub fn label_settings(&self) -> Result<LabelSettings, OperatorError> {
        match self.store.meta(LABEL_SETTINGS)? {
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| OperatorError::Internal(format!("label settings are corrupt: {e}"))),
            None => Ok(LabelSettings::default()),
        }
    }

    /// Sets the owner's label settings.
    pub async fn set_label_settings(
        &self,
        settings: LabelSettings,
    ) -> Result<LabelSettings, OperatorError> {
        settings
            .validate()
            .map_err(|e| OperatorError::BadInput(e.to_string()))?;
        let value =
            serde_json::to_vec(&settings).map_err(|e| OperatorError::Internal(e.to_string()))?;
        self.commit(|now| {
            let change = Change {
                meta: vec![(LABEL_SETTINGS.to_string(), value.clone())],
                audit: vec![AuditEvent::operator(
                    None,
                    "label-settings-set",
                    String::from_utf8_lossy(&value).into_owned(),
                    now,
                )],
                ..Change::default()
            };
            Ok::<_, OperatorError>(Pending::of(change, ()))
        })
        .await?;
        Ok(settings)
    }

    /// Where labels are published when the owner did not say: this onboarder's HTTPS listener
    /// (set once it listens).
    pub fn set_label_home(&self, base: String) {
        let _ = self.label_home.set(base);
    }

    /// The token of device `id`'s label: its name and a MAC under the server's URL key, so a
    /// label URL is stable, needs no lookup table, and cannot be guessed from a serial.
    pub fn label_token(&self, id: &DeviceId) -> String {
        let name = id.to_string();
        let tag = ring::hmac::sign(&self.url_key, format!("label\0{name}").as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(name.as_bytes()),
            URL_SAFE_NO_PAD.encode(&tag.as_ref()[..TOKEN_MAC])
        )
    }

    /// The device a label token names, if its MAC verifies.
    pub fn label_device(&self, token: &str) -> Option<DeviceId> {
        let (name, mac) = token.split_once('.')?;
        let name = String::from_utf8(URL_SAFE_NO_PAD.decode(name).ok()?).ok()?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let tag = ring::hmac::sign(&self.url_key, format!("label\0{name}").as_bytes());
        // Compared in constant time: the MAC is the only secret a label URL has.
        let differ = tag.as_ref()[..TOKEN_MAC]
            .iter()
            .zip(&mac)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (mac.len() == TOKEN_MAC && differ == 0)
            .then(|| name.parse().ok())
            .flatten()
    }

    /// The URL of device `id`'s label.
    pub fn label_url(&self, id: &DeviceId) -> Result<String, OperatorError> {
        let base = match self.label_settings()?.base_url {
            Some(base) => base,
            None => self.label_home.get().cloned().ok_or_else(|| {
                OperatorError::NotFound(
                    "a place to publish labels: no HTTPS listener, and no base_url in the \
                     label settings"
                        .into(),
                )
            })?,
        };
        Ok(format!(
            "{}/{}",
            base.trim_end_matches('/'),
            self.label_token(id)
        ))
    }

    /// The live label of device `id`, as the owner's settings say.
    pub fn label_of(&self, id: &DeviceId) -> Result<Label, OperatorError> {
        let record = self.device(id)?;
        let settings = self.label_settings()?;
        let releases = self.store.releases()?;
        let statements = self.vex_statements()?;
        let manufacturer = self
            .store
            .anchors()?
            .into_iter()
            .find(|a| a.maker == id.maker)
            .map(|a| a.name);
        let support = self.support_of(record.class_id.as_deref());
        let facts = LabelFacts {
            record: &record,
            manufacturer,
            releases: &releases,
            statements: &statements,
            support: support.as_ref(),
            url: self.label_url(id)?,
            now: self.now(),
        };
        Ok(label::label(facts, &settings.show))
    }
}
