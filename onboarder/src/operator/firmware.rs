//! Firmware for operators: the manufacturers' firmware keys, the release repository, and
//! campaigns (create, start/pause/resume/abort, status, and the engine's tick).

use serde::{Deserialize, Serialize};

use super::OperatorError;
use crate::audit::AuditEvent;
use crate::core::campaign::{self, Campaign, CampaignState, Step, Tally};
use crate::core::firmware;
use crate::core::record::JobState;
use crate::core::release::Release;
use crate::core::{DeviceId, DeviceRecord, DeviceState};
use crate::service::Service;
use crate::store::{Change, StoreError};
use protocol::manifest::Manifest;
use protocol::message::Command;

/// Time between two campaign engine ticks, in seconds (rate limits are per tick).
pub const TICK: f64 = 0.25;

/// A manufacturer's firmware-signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareKey {
    /// Vendor it signs for (the manifest's vendor id).
    pub vendor_id: String,
    /// Raw Ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// SHA-256 of the key, hex.
    pub fingerprint: String,
    /// When it was imported.
    pub added_at: u64,
}

/// Which devices a campaign targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Every active device.
    All,
    /// Active devices of one class (as they report it).
    Class(String),
    /// These devices, as operators name them (`MAKER/SERIAL`, or a serial only one maker has).
    Devices(Vec<String>),
}

/// What an operator asks for when creating a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignSpec {
    /// The release: its digest (hex) or its version.
    pub release: String,
    /// Which devices.
    pub target: Target,
    /// Cumulative percentages of the waves, ending at 100.
    pub waves: Vec<u8>,
    /// Failures allowed, in percent of the devices offered so far.
    pub failure_threshold: u8,
    /// Offers per second at most.
    #[serde(default)]
    pub rate: Option<u32>,
    /// Seconds a wave may run before the next is offered anyway (silent devices keep their
    /// offer); `None` waits for every device of the wave.
    #[serde(default)]
    pub wave_timeout: Option<u64>,
}

/// A campaign and where every device of it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignStatus {
    /// Identifier.
    pub id: String,
    /// Release version.
    pub version: String,
    /// State.
    pub state: CampaignState,
    /// Wave being offered (0-based).
    pub wave: usize,
    /// Per wave.
    pub waves: Vec<Tally>,
    /// All waves together.
    pub total: Tally,
    /// Per device.
    pub devices: Vec<DeviceProgress>,
}

/// One device in a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProgress {
    /// The device.
    pub device: DeviceId,
    /// Wave (0-based).
    pub wave: usize,
    /// Job state (`waiting` when not offered yet).
    pub state: String,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// Bytes the device holds.
    pub bytes: u64,
    /// Firmware the device runs now.
    pub running: Option<String>,
}

fn decode<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, OperatorError> {
    protocol::cbor::from_slice(bytes, 64 * 1024 * 1024).map_err(|e| {
        OperatorError::Store(StoreError::Corrupt {
            key: name.to_string(),
            detail: e.to_string(),
        })
    })
}

impl Service {
    /// Imports a manufacturer's firmware-signing key (PEM `PUBLIC KEY`, Ed25519) for `vendor`.
    pub async fn import_firmware_key(
        &self,
        pem: &str,
        vendor: &str,
    ) -> Result<FirmwareKey, OperatorError> {
        let key = certs::key::public_key_from_pem(pem)
            .map_err(|e| OperatorError::BadInput(e.to_string()))?;
        if !matches!(key, protocol::keys::PublicKey::Ed25519(_)) {
            return Err(OperatorError::BadInput("firmware keys are Ed25519".into()));
        }
        let fingerprint = super::sha256_hex(key.raw());
        let record = FirmwareKey {
            vendor_id: vendor.to_string(),
            key: key.raw().to_vec(),
            fingerprint: fingerprint.clone(),
            added_at: self.now(),
        };
        self.store
            .commit(Change {
                meta: vec![(
                    format!("firmware-key/{fingerprint}"),
                    protocol::cbor::to_vec(&record),
                )],
                audit: vec![AuditEvent::operator(
                    None,
                    "firmware-key-imported",
                    format!("{vendor} sha256:{fingerprint}"),
                    self.now(),
                )],
                ..Change::default()
            })
            .await?;
        Ok(record)
    }

    /// Imported firmware keys.
    pub fn firmware_keys(&self) -> Result<Vec<FirmwareKey>, OperatorError> {
        self.store
            .meta_prefix("firmware-key/")?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Accepts a release after checking it: the manifest verifies with an imported key of its
    /// vendor, and the image has the manifest's size and digest. The image is stored under its
    /// digest. Uploading the same release again changes nothing; another image with a sequence
    /// number already used for the class is refused.
    pub async fn upload_release(
        &self,
        manifest: &[u8],
        image: &[u8],
    ) -> Result<Release, OperatorError> {
        let unverified = Manifest::parse_unverified(manifest)
            .map_err(|e| OperatorError::BadInput(e.to_string()))?;
        let keys = self.firmware_keys()?;
        let verified = keys
            .iter()
            .filter(|k| k.vendor_id == unverified.vendor_id)
            .filter_map(|k| protocol::keys::PublicKey::ed25519(&k.key).ok())
            .find_map(|k| Manifest::open(manifest, &k).ok())
            .ok_or_else(|| {
                OperatorError::BadInput(format!(
                    "the manifest is not signed by a firmware key of {:?}",
                    unverified.vendor_id
                ))
            })?;
        verified
            .check_image(image.len() as u64, &protocol::manifest::sha256(image))
            .map_err(|e| OperatorError::BadInput(e.to_string()))?;
        if let Some(existing) = self.release(&certs::inspect::hex(&verified.digest))? {
            return Ok(existing);
        }
        if let Some(clash) = self.releases()?.into_iter().find(|r| {
            r.vendor_id == verified.vendor_id
                && r.class_id == verified.class_id
                && r.sequence == verified.sequence
        }) {
            return Err(OperatorError::BadInput(format!(
                "sequence {} is already release {} of {}",
                clash.sequence, clash.version, clash.class_id
            )));
        }
        let images = self.images.clone();
        let (digest, bytes) = (verified.digest.clone(), image.to_vec());
        tokio::task::spawn_blocking(move || images.put(&digest, &bytes))
            .await
            .map_err(|e| OperatorError::BadInput(e.to_string()))??;
        let release = Release {
            digest: verified.digest.clone(),
            manifest: manifest.to_vec(),
            vendor_id: verified.vendor_id,
            class_id: verified.class_id,
            sequence: verified.sequence,
            version: verified.version,
            size: verified.size,
            uploaded_at: self.now(),
        };
        let hex = certs::inspect::hex(&release.digest);
        self.store
            .commit(Change {
                meta: vec![(format!("release/{hex}"), protocol::cbor::to_vec(&release))],
                audit: vec![AuditEvent::operator(
                    None,
                    "firmware-uploaded",
                    format!(
                        "{} {} sequence {} sha256:{hex}",
                        release.class_id, release.version, release.sequence
                    ),
                    self.now(),
                )],
                ..Change::default()
            })
            .await?;
        Ok(release)
    }

    /// One release by digest (hex).
    pub fn release(&self, digest_hex: &str) -> Result<Option<Release>, OperatorError> {
        let key = format!("release/{digest_hex}");
        self.store.meta(&key)?.map(|v| decode(&key, &v)).transpose()
    }

    /// Every release.
    pub fn releases(&self) -> Result<Vec<Release>, OperatorError> {
        self.store
            .meta_prefix("release/")?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    fn find_release(&self, name: &str) -> Result<Release, OperatorError> {
        if let Some(r) = self.release(name)? {
            return Ok(r);
        }
        let mut matches: Vec<Release> = self
            .releases()?
            .into_iter()
            .filter(|r| r.version == name)
            .collect();
        match matches.len() {
            1 => Ok(matches.remove(0)),
            0 => Err(OperatorError::NotFound(format!("release {name}"))),
            _ => Err(OperatorError::BadInput(format!(
                "version {name} is ambiguous; use the digest"
            ))),
        }
    }

    /// One campaign.
    pub fn campaign(&self, id: &str) -> Result<Campaign, OperatorError> {
        let key = format!("campaign/{id}");
        let bytes = self
            .store
            .meta(&key)?
            .ok_or_else(|| OperatorError::NotFound(format!("campaign {id}")))?;
        decode(&key, &bytes)
    }

    /// Every campaign.
    pub fn campaigns(&self) -> Result<Vec<Campaign>, OperatorError> {
        self.store
            .meta_prefix("campaign/")?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    async fn save_campaign(
        &self,
        campaign: &Campaign,
        event: Option<AuditEvent>,
    ) -> Result<(), OperatorError> {
        self.store
            .commit(Change {
                meta: vec![(
                    format!("campaign/{}", campaign.id),
                    protocol::cbor::to_vec(campaign),
                )],
                audit: event.into_iter().collect(),
                ..Change::default()
            })
            .await?;
        Ok(())
    }

    fn all_devices(&self) -> Result<Vec<DeviceRecord>, OperatorError> {
        let mut out: Vec<DeviceRecord> = Vec::new();
        loop {
            let page = self.store.devices(out.last().map(|d| &d.id), 1000)?;
            let done = page.len() < 1000;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    /// Creates a campaign (not started).
    pub async fn create_campaign(&self, spec: CampaignSpec) -> Result<Campaign, OperatorError> {
        let release = self.find_release(&spec.release)?;
        if spec.failure_threshold > 100 {
            return Err(OperatorError::BadInput(
                "the failure threshold is a percentage".into(),
            ));
        }
        let targets: Vec<DeviceId> = match &spec.target {
            Target::Devices(named) => {
                let mut ids = named
                    .iter()
                    .map(|n| self.resolve(n))
                    .collect::<Result<Vec<_>, _>>()?;
                ids.sort();
                ids.dedup();
                ids
            }
            Target::All | Target::Class(_) => self
                .all_devices()?
                .into_iter()
                .filter(|d| d.state == DeviceState::Active)
                .filter(|d| match &spec.target {
                    Target::Class(c) => d.class_id.as_deref() == Some(c.as_str()),
                    _ => true,
                })
                .map(|d| d.id)
                .collect(),
        };
        let waves = campaign::plan(&targets, &spec.waves)?;
        let _guard = self.campaigns.lock().await;
        let id = format!("c-{}", self.campaigns()?.len() + 1);
        let now = self.now();
        let campaign = Campaign {
            id: id.clone(),
            release: release.digest.clone(),
            version: release.version.clone(),
            waves,
            percentages: spec.waves.clone(),
            failure_threshold: spec.failure_threshold,
            rate: spec.rate,
            wave_timeout: spec.wave_timeout,
            state: CampaignState::Created,
            wave: 0,
            wave_started_at: 0,
            created_at: now,
            updated_at: now,
        };
        let event = AuditEvent::operator(
            None,
            "campaign-created",
            format!(
                "{id}: {} to {} devices in waves {:?}",
                release.version,
                targets.len(),
                spec.waves
            ),
            now,
        );
        self.save_campaign(&campaign, Some(event)).await?;
        Ok(campaign)
    }

    /// An operator's order about a campaign: `start`, `pause`, `resume` or `abort`. Aborting
    /// cancels the offers devices have not acted on.
    pub async fn order_campaign(&self, id: &str, order: &str) -> Result<Campaign, OperatorError> {
        let guard = self.campaigns.lock().await;
        let mut campaign = self.campaign(id)?;
        let now = self.now();
        let to = match order {
            "start" | "resume" => CampaignState::Running,
            "pause" => CampaignState::Paused {
                reason: "paused by the operator".into(),
            },
            "abort" => CampaignState::Aborted,
            other => return Err(OperatorError::BadInput(format!("unknown order {other:?}"))),
        };
        if order == "resume" && !matches!(campaign.state, CampaignState::Paused { .. }) {
            return Err(OperatorError::BadInput(format!(
                "campaign {id} is not paused"
            )));
        }
        campaign.order(to, now)?;
        let event = AuditEvent::operator(None, &format!("campaign-{order}"), id, now);
        self.save_campaign(&campaign, Some(event)).await?;
        drop(guard);
        if campaign.state == CampaignState::Aborted {
            let devices: Vec<DeviceId> = campaign.waves.iter().flatten().cloned().collect();
            let mut report = super::orders::OrderReport::default();
            for chunk in devices.chunks(1000) {
                self.order_chunk(chunk, &mut report, |device, record, now| {
                    firmware::cancel(device, record, id, now)
                })
                .await?;
            }
        }
        self.firmware_changed.notify_one();
        Ok(campaign)
    }

    /// The job states of a campaign's devices, from the index (built from the store the
    /// first time a campaign is looked at after a restart).
    fn job_states(
        &self,
        campaign: &Campaign,
    ) -> Result<std::collections::HashMap<DeviceId, JobState>, OperatorError> {
        if let Some(states) = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&campaign.id)
        {
            return Ok(states.clone());
        }
        let mut states = std::collections::HashMap::new();
        for device in campaign.waves.iter().flatten() {
            if let Some(job) = self
                .store
                .device(device)?
                .and_then(|r| r.firmware_job)
                .filter(|j| j.campaign == campaign.id)
            {
                states.insert(device.clone(), job.state);
            }
        }
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(campaign.id.clone(), states.clone());
        Ok(states)
    }

    /// Where a campaign stands, per wave; with `devices`, also every device (which reads
    /// their records).
    pub fn campaign_status(
        &self,
        id: &str,
        devices: bool,
    ) -> Result<CampaignStatus, OperatorError> {
        let campaign = self.campaign(id)?;
        let states = self.job_states(&campaign)?;
        let mut status = CampaignStatus {
            id: campaign.id.clone(),
            version: campaign.version.clone(),
            state: campaign.state.clone(),
            wave: campaign.wave,
            waves: Vec::new(),
            total: Tally::default(),
            devices: Vec::new(),
        };
        for (w, wave) in campaign.waves.iter().enumerate() {
            let mut tally = Tally::default();
            for device in wave {
                let state = states.get(device);
                tally.add(state);
                status.total.add(state);
                if !devices {
                    continue;
                }
                let record = self.store.device(device)?;
                let job = record
                    .as_ref()
                    .and_then(|r| r.firmware_job.as_ref())
                    .filter(|j| j.campaign == campaign.id);
                status.devices.push(DeviceProgress {
                    device: device.clone(),
                    wave: w,
                    state: job.map_or("waiting", |j| j.state.name()).to_string(),
                    reason: job.and_then(|j| match &j.state {
                        JobState::RolledBack { reason }
                        | JobState::Failed { reason }
                        | JobState::Skipped { reason } => Some(reason.clone()),
                        _ => None,
                    }),
                    bytes: job.map_or(0, |j| j.bytes),
                    running: record.and_then(|r| r.firmware_version),
                });
            }
            status.waves.push(tally);
        }
        Ok(status)
    }

    /// One step of every running campaign: offers the next devices (within the rate), pauses
    /// on too many failures, moves to the next wave when one is over. Returns the commands to
    /// push to the devices just offered.
    pub async fn campaign_tick(&self) -> Result<Vec<(DeviceId, Command)>, OperatorError> {
        let _guard = self.campaigns.lock().await;
        let mut pushes = Vec::new();
        for mut campaign in self.campaigns()? {
            if campaign.state != CampaignState::Running {
                continue;
            }
            let release = self
                .release(&certs::inspect::hex(&campaign.release))?
                .ok_or_else(|| OperatorError::NotFound("the campaign's release".into()))?;
            let states = self.job_states(&campaign)?;
            let (mut offered, mut current, mut unoffered) =
                (Tally::default(), Tally::default(), Vec::new());
            for (w, wave) in campaign.waves.iter().enumerate().take(campaign.wave + 1) {
                for device in wave {
                    let state = states.get(device);
                    offered.add(state);
                    if w == campaign.wave {
                        current.add(state);
                        if state.is_none() {
                            unoffered.push(device.clone());
                        }
                    }
                }
            }
            if let Some(rate) = campaign.rate {
                unoffered.truncate(((f64::from(rate) * TICK).ceil() as usize).max(1));
            }
            let now = self.now();
            match campaign.next_step(&offered, &current, unoffered, now) {
                Step::Wait => {}
                Step::Offer(devices) => {
                    let mut report = super::orders::OrderReport::default();
                    self.order_chunk(&devices, &mut report, |device, record, now| {
                        firmware::offer(device, record, &campaign.id, &release, now)
                    })
                    .await?;
                    // Devices that cannot take it (quarantined, gone) count as skipped: mark
                    // them so the wave can end.
                    let accepted: std::collections::HashSet<&DeviceId> =
                        report.accepted.iter().collect();
                    for device in devices.iter().filter(|d| !accepted.contains(d)) {
                        self.order_chunk(
                            std::slice::from_ref(device),
                            &mut Default::default(),
                            |d, r, now| firmware::skip(d, r, &campaign.id, &release, now),
                        )
                        .await?;
                    }
                    for device in report.accepted {
                        pushes.push((
                            device,
                            Command::Update {
                                manifest: release.manifest.clone(),
                            },
                        ));
                    }
                }
                Step::Pause(reason) => {
                    campaign.state = CampaignState::Paused {
                        reason: reason.clone(),
                    };
                    campaign.updated_at = now;
                    let event = AuditEvent::operator(
                        None,
                        "campaign-paused",
                        format!("{}: {reason}", campaign.id),
                        now,
                    );
                    self.save_campaign(&campaign, Some(event)).await?;
                }
                Step::Advance { stragglers } => {
                    campaign.wave += 1;
                    campaign.wave_started_at = now;
                    campaign.updated_at = now;
                    let timed_out = if stragglers > 0 {
                        format!(
                            " (the previous wave timed out with {stragglers} of its devices not over)"
                        )
                    } else {
                        String::new()
                    };
                    let event = AuditEvent::operator(
                        None,
                        "campaign-wave",
                        format!(
                            "{}: wave {} of {}{timed_out}",
                            campaign.id,
                            campaign.wave + 1,
                            campaign.waves.len()
                        ),
                        now,
                    );
                    self.save_campaign(&campaign, Some(event)).await?;
                }
                Step::Complete => {
                    campaign.state = CampaignState::Completed;
                    campaign.updated_at = now;
                    let event =
                        AuditEvent::operator(None, "campaign-completed", campaign.id.clone(), now);
                    self.save_campaign(&campaign, Some(event)).await?;
                }
            }
        }
        // Offers that skipped a device (it already runs the release) may end a wave at once.
        Ok(pushes)
    }
}
