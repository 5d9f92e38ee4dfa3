//! Staged firmware campaigns: waves, a failure threshold that pauses the campaign by itself,
//! and a rate limit (the practice of hawkBit rollouts and AWS IoT jobs).
//!
//! The targets are fixed when the campaign is created and split into disjoint waves by
//! cumulative percentage (1, 10, 100 over 1,000 devices: 10, 90 and 900 devices). A wave is
//! offered once the previous one is over (every device healthy, failed, rolled back or
//! skipped), or, if the campaign has a wave timeout, once the wave has run that long: a device
//! that is offline must not hold back the fleet. Its offer stands (it finds it when it comes
//! back) and the campaign completes only when every device is over. Whenever the failures exceed the threshold, as a percentage of the devices offered
//! so far, the campaign pauses and the remaining waves are left untouched.

use serde::{Deserialize, Serialize};

use super::error::LifecycleError;
use super::identity::DeviceId;
use super::record::JobState;
use crate::audit::AuditEvent;

/// Where a campaign stands.
#[non_exhaustive]
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CampaignState {
    /// Created, not started.
    Created,
    /// Offering waves.
    Running,
    /// Stopped offering, by an operator or by the failure threshold.
    Paused {
        /// Why.
        reason: String,
    },
    /// Every wave is over.
    Completed,
    /// Stopped for good.
    Aborted,
}

/// A staged rollout of one release.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    /// Identifier.
    pub id: String,
    /// SHA-256 of the release's image.
    #[serde(with = "serde_bytes")]
    pub release: Vec<u8>,
    /// Release version (for people).
    pub version: String,
    /// The waves: disjoint lists of devices, in order.
    pub waves: Vec<Vec<DeviceId>>,
    /// Cumulative percentages the waves were cut at.
    pub percentages: Vec<u8>,
    /// Failures allowed, in percent of the devices offered so far, before the campaign pauses.
    pub failure_threshold: u8,
    /// Offers per second at most.
    pub rate: Option<u32>,
    /// Seconds a wave may run before the next one is offered even though some of its devices
    /// are not over; `None` waits for every device.
    #[serde(default)]
    pub wave_timeout: Option<u64>,
    /// Devices download the image over HTTPS (the offer carries its URL) instead of over
    /// their session.
    #[serde(default)]
    pub over_https: bool,
    /// The URLs are signed for each device and expire (`?device=&expires=&sig=`), so any
    /// HTTP client may fetch them without the device's certificate.
    #[serde(default)]
    pub signed_urls: bool,
    /// State.
    pub state: CampaignState,
    /// Index of the wave being offered.
    pub wave: usize,
    /// When the current wave started running (its start, or the campaign's last resume).
    #[serde(default)]
    pub wave_started_at: u64,
    /// When it was created.
    pub created_at: u64,
    /// Last change.
    pub updated_at: u64,
    /// The saved query the campaign targets, if it does: devices that match it later join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<QueryTarget>,
    /// An offer rate that starts slow and multiplies, if the campaign ramps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<Ramp>,
}

/// A campaign's target that grows: the saved query (as it was when the campaign was created).
/// Such a campaign does not complete when its waves are over: it waits for devices that come
/// to match (a device onboarded later, a tag added), which join its last wave, until an
/// operator pauses or aborts it (as hawkBit's dynamic rollouts do).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryTarget {
    /// The saved query's name.
    pub name: String,
    /// Its definition.
    pub query: super::query::DeviceQuery,
}

/// An offer rate that ramps up: it starts at `current`, and every `every` seconds that the
/// campaign runs with its failures under the threshold it is multiplied by `factor`, up to the
/// campaign's rate (its ceiling; none: no ceiling). Every rate it took is kept, for operators.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ramp {
    /// Offers per second now.
    pub current: u32,
    /// Multiplier per step (at least 2).
    pub factor: u32,
    /// Seconds between steps.
    pub every: u64,
    /// When the rate last changed (or the campaign started).
    pub last_step_at: u64,
    /// Every rate so far, the first included.
    pub steps: Vec<u32>,
}

/// Counts of job states over some devices.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Devices in the set.
    pub devices: usize,
    /// Not offered yet.
    pub waiting: usize,
    /// Offered, still in progress.
    pub in_progress: usize,
    /// Healthy.
    pub healthy: usize,
    /// Rolled back or failed.
    pub failed: usize,
    /// Skipped or cancelled.
    pub skipped: usize,
}

impl Tally {
    /// Adds one device whose job for the campaign is `state` (`None`: not offered).
    pub fn add(&mut self, state: Option<&JobState>) {
        self.devices += 1;
        match state {
            None => self.waiting += 1,
            Some(s) if !s.is_final() => self.in_progress += 1,
            Some(JobState::Healthy) => self.healthy += 1,
            Some(s) if s.is_failure() => self.failed += 1,
            Some(_) => self.skipped += 1,
        }
    }

    /// Whether every device is done (nothing waiting or in progress).
    pub fn is_over(&self) -> bool {
        self.waiting == 0 && self.in_progress == 0
    }
}

/// Devices a campaign has in progress at most (offered and not yet healthy, failed or
/// skipped). Each ends its update with a reboot and a new handshake, so a wave offered whole
/// sends that many devices to reconnect within seconds: bounded near the handshakes the server
/// takes at once (`limits.max_handshakes`, 1,024). At 100,000 devices, a last wave of 90,000
/// rebooting together collapsed the server's sessions from 100,000 to 566. Downloads gain
/// nothing from more: the server serves a bounded number of chunks at a time.
pub const MAX_IN_PROGRESS: usize = 1_000;

/// What the campaign should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do now.
    Wait,
    /// Offer the release to these devices of the current wave.
    Offer(Vec<DeviceId>),
    /// Too many failures: pause.
    Pause(String),
    /// Go on with the next wave: the current one is over, or it timed out with `stragglers`
    /// devices still in progress.
    Advance {
        /// Devices of the current wave not over yet.
        stragglers: usize,
    },
    /// Every wave is over.
    Complete,
}

/// Splits `targets` into waves at cumulative `percentages` (each in 1..=100, increasing, the
/// last 100).
pub fn plan<T: Clone>(targets: &[T], percentages: &[u8]) -> Result<Vec<Vec<T>>, LifecycleError> {
    let ok = !percentages.is_empty()
        && percentages.windows(2).all(|w| w[0] < w[1])
        && percentages.first().is_some_and(|p| *p >= 1)
        && percentages.last() == Some(&100);
    if !ok {
        return Err(LifecycleError::BadRequest(
            "waves are increasing cumulative percentages ending at 100, like 1,10,100".into(),
        ));
    }
    if targets.is_empty() {
        return Err(LifecycleError::BadRequest(
            "the campaign targets no device".into(),
        ));
    }
    let mut waves = Vec::new();
    let mut start = 0;
    for p in percentages {
        // At least one device per wave while there are devices left.
        let end = ((targets.len() * usize::from(*p)).div_ceil(100))
            .max(start + 1)
            .min(targets.len());
        waves.push(targets[start..end].to_vec());
        start = end;
    }
    Ok(waves)
}

impl Campaign {
    /// Decides the next step at `now` from the tallies of the waves offered so far
    /// (`offered`: waves `0..=wave` together) and of the current wave.
    pub fn next_step(
        &self,
        offered: &Tally,
        current: &Tally,
        mut unoffered: Vec<DeviceId>,
        now: u64,
    ) -> Step {
        if self.state != CampaignState::Running {
            return Step::Wait;
        }
        let attempted = offered.devices - offered.waiting;
        if offered.failed * 100 > usize::from(self.failure_threshold) * attempted.max(1) {
            return Step::Pause(format!(
                "{} of {attempted} devices failed, above the {}% threshold",
                offered.failed, self.failure_threshold
            ));
        }
        if !unoffered.is_empty() {
            let room = MAX_IN_PROGRESS.saturating_sub(offered.in_progress);
            if room == 0 {
                return Step::Wait;
            }
            unoffered.truncate(room);
            return Step::Offer(unoffered);
        }
        let last = self.wave + 1 >= self.waves.len();
        let timed_out = self
            .wave_timeout
            .is_some_and(|t| now >= self.wave_started_at.saturating_add(t));
        if last {
            // A campaign on a query waits for devices that come to match it.
            return if offered.is_over() && self.query.is_none() {
                Step::Complete
            } else {
                Step::Wait
            };
        }
        if current.is_over() || timed_out {
            Step::Advance {
                stragglers: current.in_progress,
            }
        } else {
            Step::Wait
        }
    }

    /// Offers per second at most now: the ramp's rate if the campaign ramps, else its rate.
    pub fn offer_rate(&self) -> Option<u32> {
        match &self.ramp {
            Some(ramp) => Some(self.rate.map_or(ramp.current, |r| ramp.current.min(r))),
            None => self.rate,
        }
    }

    /// Moves the ramp one step up if it is time: the campaign runs, `every` seconds passed
    /// since the last step, the failures among the devices offered so far (`offered`) are
    /// within the threshold, and the ceiling is not reached. Returns what to audit.
    pub fn ramp_up(&mut self, offered: &Tally, now: u64) -> Option<AuditEvent> {
        if self.state != CampaignState::Running {
            return None;
        }
        let ceiling = self.rate.unwrap_or(u32::MAX);
        let threshold = usize::from(self.failure_threshold);
        let attempted = offered.devices - offered.waiting;
        let ramp = self.ramp.as_mut()?;
        let healthy_enough = offered.failed * 100 <= threshold * attempted.max(1);
        if now < ramp.last_step_at.saturating_add(ramp.every)
            || ramp.current >= ceiling
            || !healthy_enough
        {
            return None;
        }
        let from = ramp.current;
        ramp.current = from.saturating_mul(ramp.factor).min(ceiling);
        ramp.last_step_at = now;
        ramp.steps.push(ramp.current);
        self.updated_at = now;
        Some(AuditEvent::operator(
            None,
            "campaign-ramp",
            format!(
                "{}: {from} -> {} offers per second ({} of {attempted} failed)",
                self.id, ramp.current, offered.failed
            ),
            now,
        ))
    }

    /// Adds the devices of `matching` that the campaign does not have yet to its last wave (a
    /// campaign on a query; others take no one). Returns what to audit.
    pub fn join(
        &mut self,
        matching: impl IntoIterator<Item = DeviceId>,
        now: u64,
    ) -> Option<AuditEvent> {
        self.query.as_ref()?;
        if matches!(
            self.state,
            CampaignState::Completed | CampaignState::Aborted
        ) {
            return None;
        }
        let present: std::collections::HashSet<DeviceId> =
            self.waves.iter().flatten().cloned().collect();
        let mut new: Vec<DeviceId> = matching
            .into_iter()
            .filter(|d| !present.contains(d))
            .collect();
        new.sort();
        new.dedup();
        if new.is_empty() {
            return None;
        }
        let count = new.len();
        self.waves.last_mut()?.extend(new);
        self.updated_at = now;
        Some(AuditEvent::operator(
            None,
            "campaign-joined",
            format!("{}: {count} devices that match the query joined", self.id),
            now,
        ))
    }

    /// Devices of waves `0..=wave`.
    pub fn offered_devices(&self) -> impl Iterator<Item = &DeviceId> {
        self.waves.iter().take(self.wave + 1).flatten()
    }

    /// Carries out an operator's order, if the campaign's state allows it: start from
    /// created, pause from running, resume from paused, abort from anything but over.
    pub fn order(&mut self, order: CampaignOrder, now: u64) -> Result<AuditEvent, LifecycleError> {
        use CampaignState::*;
        let to = match order {
            CampaignOrder::Start | CampaignOrder::Resume => Running,
            CampaignOrder::Pause => Paused {
                reason: "paused by the operator".into(),
            },
            CampaignOrder::Abort => Aborted,
        };
        let allowed = matches!(
            (&self.state, order),
            (Created, CampaignOrder::Start)
                | (Running, CampaignOrder::Pause)
                | (Paused { .. }, CampaignOrder::Resume)
                | (Created | Running | Paused { .. }, CampaignOrder::Abort)
        );
        if !allowed {
            return Err(LifecycleError::BadRequest(format!(
                "campaign {} is {}; it cannot {order}",
                self.id,
                self.state.name()
            )));
        }
        if to == Running {
            self.wave_started_at = now;
            if let Some(ramp) = self.ramp.as_mut() {
                ramp.last_step_at = now;
            }
        }
        self.state = to;
        self.updated_at = now;
        Ok(AuditEvent::operator(
            None,
            &format!("campaign-{order}"),
            self.id.clone(),
            now,
        ))
    }

    /// Applies a step the engine decided: pauses, moves to the next wave, or completes, and
    /// returns what to audit. Offers and waits change nothing here (offers change devices).
    pub fn apply(&mut self, step: &Step, now: u64) -> Result<Option<AuditEvent>, LifecycleError> {
        if self.state != CampaignState::Running {
            return Err(LifecycleError::BadRequest(format!(
                "campaign {} is {}: it takes no step",
                self.id,
                self.state.name()
            )));
        }
        let (action, detail) = match step {
            Step::Wait | Step::Offer(_) => return Ok(None),
            Step::Pause(reason) => {
                self.state = CampaignState::Paused {
                    reason: reason.clone(),
                };
                ("campaign-paused", format!("{}: {reason}", self.id))
            }
            Step::Advance { stragglers } => {
                if self.wave + 1 >= self.waves.len() {
                    return Err(LifecycleError::BadRequest(format!(
                        "campaign {} is in its last wave",
                        self.id
                    )));
                }
                self.wave += 1;
                self.wave_started_at = now;
                let timed_out = if *stragglers > 0 {
                    format!(
                        " (the previous wave timed out with {stragglers} of its devices not over)"
                    )
                } else {
                    String::new()
                };
                (
                    "campaign-wave",
                    format!(
                        "{}: wave {} of {}{timed_out}",
                        self.id,
                        self.wave + 1,
                        self.waves.len()
                    ),
                )
            }
            Step::Complete => {
                self.state = CampaignState::Completed;
                ("campaign-completed", self.id.clone())
            }
        };
        self.updated_at = now;
        Ok(Some(AuditEvent::operator(None, action, detail, now)))
    }
}

/// An operator's order about a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CampaignOrder {
    /// Start offering (from created).
    Start,
    /// Stop offering (devices updating finish).
    Pause,
    /// Offer again (from paused).
    Resume,
    /// Stop for good; offers not acted on are cancelled.
    Abort,
}

impl std::fmt::Display for CampaignOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CampaignOrder::Start => "start",
            CampaignOrder::Pause => "pause",
            CampaignOrder::Resume => "resume",
            CampaignOrder::Abort => "abort",
        })
    }
}

impl std::str::FromStr for CampaignOrder {
    type Err = LifecycleError;

    fn from_str(s: &str) -> Result<Self, LifecycleError> {
        match s {
            "start" => Ok(CampaignOrder::Start),
            "pause" => Ok(CampaignOrder::Pause),
            "resume" => Ok(CampaignOrder::Resume),
            "abort" => Ok(CampaignOrder::Abort),
            other => Err(LifecycleError::BadRequest(format!(
                "unknown campaign order {other:?}: start, pause, resume or abort"
            ))),
        }
    }
}

impl CampaignState {
    /// Its name, for people.
    pub fn name(&self) -> &'static str {
        match self {
            CampaignState::Created => "created",
            CampaignState::Running => "running",
            CampaignState::Paused { .. } => "paused",
            CampaignState::Completed => "completed",
            CampaignState::Aborted => "aborted",
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod step_tests;
