//! Campaigns: created from a release and a target, ordered by operators, stepped by the
//! engine. Every rule is the core's ([`crate::core::campaign`]): the waves, the orders an
//! operator may give, the next step and how it applies; offers, skips and cancellations are
//! decisions about devices. Campaign writes are serialised among themselves.

use std::collections::{HashMap, HashSet};

use protocol::message::Command;
use serde::{Deserialize, Serialize};

use super::{JobStates, OperatorError, Pending, Service};
use crate::audit::AuditEvent;
use crate::core::campaign::{self, Campaign, CampaignOrder, CampaignState, Step, Tally};
use crate::core::firmware;
use crate::core::record::JobState;
use crate::core::{DeviceId, DeviceState};
use crate::store::Change;

/// Time between two campaign engine ticks, in seconds (rate limits are per tick).
pub const TICK: f64 = 0.25;

/// Which devices a campaign targets.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Every active device.
    All,
    /// Active devices of one class (as they report it).
    Class(String),
    /// These devices, as operators name them (`MAKER/SERIAL`, or a serial only one maker has).
    Devices(Vec<String>),
    /// Active devices a saved query matches, now and later: devices that come to match it
    /// join the running campaign (see [`crate::core::campaign::QueryTarget`]).
    Query(String),
}

/// How a campaign's offer rate ramps up (see [`crate::core::campaign::Ramp`]); the campaign's
/// `rate` is the ceiling.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RampSpec {
    /// Offers per second to start with.
    pub start: u32,
    /// Multiplier per step (default 2).
    #[serde(default = "RampSpec::default_factor")]
    pub factor: u32,
    /// Seconds between steps (default 10).
    #[serde(default = "RampSpec::default_every")]
    pub every: u64,
}

impl RampSpec {
    fn default_factor() -> u32 {
        2
    }
    fn default_every() -> u64 {
        10
    }
}

/// Seconds between two looks for devices that came to match a campaign's query.
const JOIN_EVERY: u64 = 2;

/// How long a signed firmware URL is good for: a device that comes later downloads over its
/// session (the agent falls back to it).
const SIGNED_URL_LIFETIME: u64 = 3600;

/// What an operator asks for when creating a campaign.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Devices download the image over HTTPS (`policy.firmware_url`) instead of over their
    /// QUIC session.
    #[serde(default)]
    pub over_https: bool,
    /// Sign each device's URL, valid for an hour from the offer (with `over_https`).
    #[serde(default)]
    pub signed_urls: bool,
    /// Start slow and ramp the offer rate up to `rate`.
    #[serde(default)]
    pub ramp: Option<RampSpec>,
}

/// A campaign and where every device of it stands.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Offers per second at most now (`None`: no limit).
    #[serde(default)]
    pub offer_rate: Option<u32>,
    /// Every rate the ramp took, oldest first (empty: the campaign does not ramp).
    #[serde(default)]
    pub ramp_steps: Vec<u32>,
    /// The saved query the campaign targets, if any.
    #[serde(default)]
    pub query: Option<String>,
    /// Per device.
    pub devices: Vec<DeviceProgress>,
}

/// One device in a campaign.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl Service {
    /// One campaign.
    pub fn campaign(&self, id: &str) -> Result<Campaign, OperatorError> {
        self.store
            .campaign(id)?
            .ok_or_else(|| OperatorError::NotFound(format!("campaign {id}")))
    }

    /// Every campaign.
    pub fn campaigns(&self) -> Result<Vec<Campaign>, OperatorError> {
        Ok(self.store.campaigns()?)
    }

    /// Writes `campaign` with `events`.
    async fn save_campaign(
        &self,
        campaign: &Campaign,
        events: impl IntoIterator<Item = AuditEvent>,
    ) -> Result<(), OperatorError> {
        let change = Change {
            campaigns: vec![campaign.clone()],
            audit: events.into_iter().collect(),
            ..Change::default()
        };
        self.commit(|_| Ok::<_, OperatorError>(Pending::of(change.clone(), ())))
            .await
    }

    /// Creates a campaign (not started).
    pub async fn create_campaign(&self, spec: CampaignSpec) -> Result<Campaign, OperatorError> {
        let release = self.find_release(&spec.release)?;
        if spec.failure_threshold > 100 {
            return Err(OperatorError::BadInput(
                "the failure threshold is a percentage".into(),
            ));
        }
        firmware::download_url(&self.registrar().policy, spec.over_https, &release.digest)?;
        if spec.signed_urls && !spec.over_https {
            return Err(OperatorError::BadInput(
                "signed URLs are for a campaign over HTTPS".into(),
            ));
        }
        let mut query = None;
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
            Target::All => self.devices_in(DeviceState::Active)?,
            Target::Class(class) => {
                let by_class = crate::core::query::DeviceQuery {
                    class: Some(class.clone()),
                    state: Some(DeviceState::Active),
                    ..Default::default()
                };
                self.matching(&by_class, active)?
            }
            Target::Query(name) => {
                let saved = self.saved_query(name)?;
                let ids = self.matching(&saved, active)?;
                query = Some(campaign::QueryTarget {
                    name: name.clone(),
                    query: saved,
                });
                ids
            }
        };
        if let Some(ramp) = &spec.ramp
            && (ramp.start == 0 || ramp.factor < 2 || ramp.every == 0)
        {
            return Err(OperatorError::BadInput(
                "a ramp starts at 1 offer per second or more, multiplies by 2 or more, every \
                 second or more"
                    .into(),
            ));
        }
        // A campaign on a query may start with no device: its waves fill as devices match.
        let waves = if query.is_some() && targets.is_empty() {
            campaign::plan(&[()], &spec.waves)?;
            vec![Vec::new(); spec.waves.len()]
        } else {
            campaign::plan(&targets, &spec.waves)?
        };
        let _guard = self.campaigns.lock().await;
        let id = format!("c-{}", self.store.campaigns()?.len() + 1);
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
            over_https: spec.over_https,
            signed_urls: spec.signed_urls,
            state: CampaignState::Created,
            wave: 0,
            wave_started_at: 0,
            created_at: now,
            updated_at: now,
            query,
            ramp: spec.ramp.as_ref().map(|r| campaign::Ramp {
                current: r.start,
                factor: r.factor,
                every: r.every,
                last_step_at: now,
                steps: vec![r.start],
            }),
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
        // A new campaign has no jobs yet: nothing to read from its devices' records.
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .loaded
            .insert(id);
        Ok(campaign)
    }

    /// The URL an offer of `campaign` carries for `device`, if any: signed for an hour from
    /// `now` when the campaign says so (the same `now` gives the same URL, in the job and in
    /// the push).
    fn offer_url(
        &self,
        campaign: &Campaign,
        digest: &[u8],
        device: &DeviceId,
        now: u64,
    ) -> Result<Option<String>, crate::core::LifecycleError> {
        let url = firmware::download_url(&self.registrar().policy, campaign.over_https, digest)?;
        Ok(match url {
            Some(url) if campaign.signed_urls => {
                Some(self.sign_download_url(&url, device, now + SIGNED_URL_LIFETIME))
            }
            other => other,
        })
    }

    /// An operator's order about a campaign. Aborting cancels the offers devices have not
    /// acted on.
    pub async fn order_campaign(
        &self,
        id: &str,
        order: CampaignOrder,
    ) -> Result<Campaign, OperatorError> {
        let guard = self.campaigns.lock().await;
        let mut campaign = self.campaign(id)?;
        let event = campaign.order(order, self.now())?;
        self.save_campaign(&campaign, Some(event)).await?;
        drop(guard);
        if campaign.state == CampaignState::Aborted {
            let devices: Vec<DeviceId> = campaign.waves.iter().flatten().cloned().collect();
            self.order(&devices, |device, record, now| {
                firmware::cancel(device, record, id, now)
            })
            .await?;
        }
        self.firmware_changed.notify_one();
        Ok(campaign)
    }

    /// Reads the job states of a campaign's devices in place, from the index (its devices'
    /// records read once, the first time a campaign is looked at in this process). In place:
    /// at 100,000 devices a copy per engine tick would cost more than the tick's own work.
    fn with_job_states<R>(
        &self,
        campaign: &Campaign,
        read: impl FnOnce(&JobStates) -> R,
    ) -> Result<R, OperatorError> {
        {
            let index = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if index.loaded.contains(&campaign.id) {
                let none = HashMap::new();
                return Ok(read(index.states.get(&campaign.id).unwrap_or(&none)));
            }
        }
        let mut stored = Vec::new();
        for device in campaign.waves.iter().flatten() {
            if let Some(record) = self.store.device(device)?
                && let Some(job) = record.firmware_job.filter(|j| j.campaign == campaign.id)
            {
                stored.push((record.id, record.version, job.state));
            }
        }
        let mut index = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        index.loaded.insert(campaign.id.clone());
        // What commits noted meanwhile is newer: it stays.
        for (device, version, state) in stored {
            index.note(&campaign.id, &device, version, &state);
        }
        let none = HashMap::new();
        Ok(read(index.states.get(&campaign.id).unwrap_or(&none)))
    }

    /// Where a campaign stands, per wave; with `devices`, also every device (which reads
    /// their records).
    pub fn campaign_status(
        &self,
        id: &str,
        devices: bool,
    ) -> Result<CampaignStatus, OperatorError> {
        let campaign = self.campaign(id)?;
        let states = self.with_job_states(&campaign, HashMap::clone)?;
        let mut status = CampaignStatus {
            id: campaign.id.clone(),
            version: campaign.version.clone(),
            state: campaign.state.clone(),
            wave: campaign.wave,
            waves: Vec::new(),
            total: Tally::default(),
            offer_rate: campaign.offer_rate(),
            ramp_steps: campaign
                .ramp
                .as_ref()
                .map(|r| r.steps.clone())
                .unwrap_or_default(),
            query: campaign.query.as_ref().map(|q| q.name.clone()),
            devices: Vec::new(),
        };
        for (w, wave) in campaign.waves.iter().enumerate() {
            let mut tally = Tally::default();
            for device in wave {
                let state = states.get(device).map(|(_, state)| state);
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
                        | JobState::Failed { reason, .. }
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
        let mut looked = self.campaigns.lock().await;
        let mut pushes = Vec::new();
        for mut campaign in self.store.campaigns()? {
            if campaign.state != CampaignState::Running {
                continue;
            }
            let mut events = Vec::new();
            let now = self.now();
            if let Some(target) = &campaign.query
                && looked
                    .get(&campaign.id)
                    .is_none_or(|at| now >= at + JOIN_EVERY)
            {
                let matching = self.matching(&target.query, active)?;
                looked.insert(campaign.id.clone(), now);
                events.extend(campaign.join(matching, now));
            }
            let release = self
                .store
                .release(&campaign.release)?
                .ok_or_else(|| OperatorError::NotFound("the campaign's release".into()))?;
            let (offered, current, mut unoffered) = self.with_job_states(&campaign, |states| {
                let (mut offered, mut current, mut unoffered) =
                    (Tally::default(), Tally::default(), Vec::new());
                for (w, wave) in campaign.waves.iter().enumerate().take(campaign.wave + 1) {
                    for device in wave {
                        let state = states.get(device).map(|(_, state)| state);
                        offered.add(state);
                        if w == campaign.wave {
                            current.add(state);
                            if state.is_none() {
                                unoffered.push(device.clone());
                            }
                        }
                    }
                }
                (offered, current, unoffered)
            })?;
            events.extend(campaign.ramp_up(&offered, now));
            if let Some(rate) = campaign.offer_rate() {
                unoffered.truncate(((f64::from(rate) * TICK).ceil() as usize).max(1));
            }
            let step = campaign.next_step(&offered, &current, unoffered, now);
            if let Step::Offer(devices) = &step {
                let report = self
                    .order(devices, |device, record, now| {
                        let url = self.offer_url(&campaign, &release.digest, device, now)?;
                        firmware::offer(device, record, &campaign.id, &release, url, now)
                    })
                    .await?;
                // Devices that cannot take it (quarantined, gone) count as skipped: mark them
                // so the wave can end.
                let accepted: HashSet<&DeviceId> = report.accepted.iter().collect();
                let refused: Vec<DeviceId> = devices
                    .iter()
                    .filter(|d| !accepted.contains(d))
                    .cloned()
                    .collect();
                self.order(&refused, |d, r, now| {
                    firmware::skip(d, r, &campaign.id, &release, now)
                })
                .await?;
                for device in report.accepted {
                    let update = Command::Update {
                        manifest: release.manifest.clone(),
                        url: self.offer_url(&campaign, &release.digest, &device, now)?,
                    };
                    pushes.push((device, update));
                }
            }
            events.extend(campaign.apply(&step, now)?);
            if !events.is_empty() {
                self.save_campaign(&campaign, events).await?;
            }
        }
        Ok(pushes)
    }
}

/// Campaigns offer firmware to active devices only.
fn active(record: &crate::core::DeviceRecord) -> bool {
    record.state == DeviceState::Active
}
