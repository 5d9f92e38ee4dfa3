//! The lifecycle phases run against a live onboarder, through its admin API, with a fleet of
//! real agents: shared by `onboarder demo` (server in process, agents on files) and the fleet
//! simulator in `benches` (server in its own process, agents in memory).
//!
//! Each phase measures the devices it concerns and returns a [`PhaseReport`]: `ok`, `failed`,
//! `seconds`, `per_second`, and the median and 99th-percentile latency of one device's part.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::operator::client::ClientError;
use certs::factory::Manufacturer;
use device_agent::Agent;
use tokio::sync::Semaphore;

use crate::core::DeviceState;
use crate::core::campaign::CampaignState;
use crate::operator::client::ApiClient;

mod fleet;
pub mod invariants;
mod report;

pub use fleet::{Fleet, incompressible_image};
pub use report::PhaseReport;

/// How long one device may take for one phase before it counts as failed.
pub const DEVICE_DEADLINE: Duration = Duration::from_secs(300);

/// How long a phase that orders `devices` devices at once may run before those not done count
/// as failed: a device's deadline, plus 10 ms per device, since the last device waits for all
/// the others (a phase runs at a few hundred devices per second on two cores: 100,000 devices
/// need minutes, not the deadline of one).
pub fn phase_deadline(devices: usize) -> Duration {
    DEVICE_DEADLINE
        + Duration::from_millis(10).saturating_mul(u32::try_from(devices).unwrap_or(u32::MAX))
}

/// How often the phases ask the server how a fleet of `devices` is doing: every 100 us per
/// device, at least every 200 ms (1 s at 10,000 devices, 10 s at 100,000). Status views read
/// every device or campaign job: asked once a second at 100,000 devices they would take half
/// of the server's CPU from the phase being measured.
pub fn poll_interval(devices: usize) -> Duration {
    Duration::from_micros(100)
        .saturating_mul(u32::try_from(devices).unwrap_or(u32::MAX))
        .max(Duration::from_millis(200))
}

/// What the phases act through.
pub struct Exercise {
    /// The onboarder's admin API.
    pub api: Arc<ApiClient>,
    /// The manufacturer of the fleet (it signs the firmware).
    pub manufacturer: Arc<Manufacturer>,
    /// Devices onboarding at the same time.
    pub concurrency: usize,
    /// Draw progress bars on stderr.
    pub progress: bool,
}

impl Exercise {
    /// Calls the (blocking) admin API off the async threads.
    pub async fn api<T: Send + 'static>(
        &self,
        call: impl FnOnce(&ApiClient) -> Result<T, ClientError> + Send + 'static,
    ) -> Result<T> {
        let api = self.api.clone();
        Ok(tokio::task::spawn_blocking(move || call(&api)).await??)
    }

    fn bar(&self, phase: &str, len: usize) -> indicatif::ProgressBar {
        if !self.progress {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(len as u64),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>12} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(phase.to_string());
        bar
    }

    /// Polls `done` (which may call the API) for at most `limit`, every [`poll_interval`] of
    /// `devices`; whether it came true.
    async fn wait_for(
        &self,
        devices: usize,
        limit: Duration,
        done: impl Fn(&ApiClient) -> Result<bool, ClientError> + Send + Sync + 'static,
    ) -> Result<bool> {
        let done = Arc::new(done);
        let deadline = Instant::now() + limit;
        let interval = poll_interval(devices);
        loop {
            let check = done.clone();
            if self.api(move |api| check(api)).await? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Waits until `agent_done` holds for every agent or, asked every [`poll_interval`],
    /// `server_done` does; at most [`phase_deadline`]. The agents are read in process every
    /// 50 ms, so the server does little work for the waiting.
    async fn settle(
        &self,
        agents: &[Arc<Agent>],
        bar: &indicatif::ProgressBar,
        agent_done: impl Fn(usize, &Agent) -> bool,
        server_done: impl Fn(&ApiClient) -> Result<bool, ClientError> + Send + Sync + 'static,
    ) -> Result<()> {
        let server_done = Arc::new(server_done);
        let deadline = Instant::now() + phase_deadline(agents.len());
        let interval = poll_interval(agents.len());
        let mut asked = Instant::now();
        loop {
            let done = agents
                .iter()
                .enumerate()
                .filter(|(i, a)| agent_done(*i, a))
                .count();
            bar.set_position(done as u64);
            if done == agents.len() || Instant::now() >= deadline {
                break;
            }
            if asked.elapsed() >= interval {
                asked = Instant::now();
                let check = server_done.clone();
                if self.api(move |api| check(api)).await? {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Every device onboards (voucher, checks, CSR, LDevID) and opens its operational session.
    pub async fn onboard(&self, agents: &[Arc<Agent>]) -> Result<PhaseReport> {
        let limit = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let bar = self.bar("onboard", agents.len());
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(agents.len());
        for agent in agents {
            let (agent, limit, bar) = (agent.clone(), limit.clone(), bar.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.ok()?;
                let t0 = Instant::now();
                let result = async {
                    agent
                        .retrying(DEVICE_DEADLINE, || agent.enroll_once())
                        .await?;
                    let session = agent.retrying(DEVICE_DEADLINE, || agent.connect()).await?;
                    session.close();
                    Ok::<_, device_agent::AgentError>(())
                }
                .await;
                bar.inc(1);
                match result {
                    Ok(()) => Some(t0.elapsed()),
                    Err(e) => {
                        tracing::warn!(serial = agent.serial(), "onboarding failed: {e}");
                        None
                    }
                }
            }));
        }
        let mut latencies = Vec::with_capacity(agents.len());
        let mut failed = 0;
        for t in tasks {
            match t.await? {
                Some(l) => latencies.push(l),
                None => failed += 1,
            }
        }
        bar.finish_and_clear();
        Ok(PhaseReport::new(&mut latencies, failed, start.elapsed()))
    }

    /// Every device asks for network access as a RADIUS server would for it: an EAP-TLS login
    /// with its latest certificate and a MAC authorization for the address it reported
    /// ([`mac_of`] its index). The first `agents.len() - gone` must be let on, the MAC
    /// authorization bringing the passphrase the device holds; the last `gone` (decommissioned)
    /// must be refused both.
    pub async fn network_access(
        &self,
        access: Arc<crate::radius::client::AccessClient>,
        agents: &[Arc<Agent>],
        gone: usize,
    ) -> Result<PhaseReport> {
        let views = self.api(|api| api.devices()).await?;
        let bar = self.bar("network", agents.len());
        let limit = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(agents.len());
        for (i, agent) in agents.iter().enumerate() {
            let view = views.iter().find(|v| v.serial == agent.serial());
            let login = view.and_then(|v| {
                let cert = v.certificates.last()?;
                Some((v.id.to_string(), cert.serial.clone()))
            });
            let stays = i < agents.len() - gone;
            let passphrase = match agent.load_state().ok().and_then(|s| s.network) {
                Some(protocol::message::NetworkProfile::Wifi { psk, .. }) => Some(psk),
                _ => None,
            };
            let (access, limit, mac) = (access.clone(), limit.clone(), mac_of(i));
            tasks.push(tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.ok()?;
                let (common_name, serial) = login?;
                tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    let login = access.eap_tls(&common_name, &serial).ok()?;
                    let station = access.mac(&mac).ok()?;
                    let given = station.attributes["reply:Tunnel-Password"]
                        .as_str()
                        .map(str::to_string);
                    let right = if stays {
                        login.granted && station.granted && given.is_some() && given == passphrase
                    } else {
                        !login.granted && !station.granted && given.is_none()
                    };
                    right.then(|| started.elapsed())
                })
                .await
                .ok()?
            }));
        }
        let mut latencies = Vec::new();
        let mut failed = 0;
        for task in tasks {
            match task.await.ok().flatten() {
                Some(latency) => latencies.push(latency),
                None => failed += 1,
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(PhaseReport::new(&mut latencies, failed, start.elapsed()))
    }

    /// Waits until `count` devices hold an operational session.
    pub async fn connected(&self, count: usize) -> Result<()> {
        let ok = self
            .wait_for(count, phase_deadline(count), move |api| {
                Ok(api.stats()?.sessions >= count)
            })
            .await?;
        if ok {
            Ok(())
        } else {
            Err(Error::Failed(format!(
                "only some of {count} devices connected"
            )))
        }
    }

    /// With every device in session, the operator orders the whole fleet to re-key. A device
    /// counts once the server confirmed it and it no longer holds its old key.
    pub async fn rotate(&self, agents: &[Arc<Agent>]) -> Result<PhaseReport> {
        let before: Vec<Option<Vec<u8>>> = agents.iter().map(|a| current_key(a)).collect();
        let renewals: Vec<u64> = agents
            .iter()
            .map(|a| a.stats().renewals.load(Relaxed))
            .collect();
        let bar = self.bar("rotate", agents.len());
        let start = Instant::now();
        let order = self
            .api(|api| {
                api.rotate(&crate::operator::api::RotateRequest {
                    all: true,
                    ..Default::default()
                })
            })
            .await?;
        let at = order.at;
        self.settle(
            agents,
            &bar,
            |i, a| a.stats().renewals.load(Relaxed) > renewals[i],
            move |api| Ok(api.rotation_status(at)?.pending == 0),
        )
        .await?;
        let elapsed = start.elapsed();
        bar.finish_and_clear();
        let status = self.api(move |api| api.rotation_status(at)).await?;
        let unfinished: std::collections::HashSet<String> = status
            .pending_devices
            .into_iter()
            .chain(status.failures.into_iter().map(|(d, _)| d))
            .map(|d| d.serial)
            .collect();
        let mut latencies = Vec::new();
        let mut failed = 0;
        for (agent, old) in agents.iter().zip(before) {
            if unfinished.contains(agent.serial()) || current_key(agent) == old {
                tracing::warn!(serial = agent.serial(), "did not rotate");
                failed += 1;
                continue;
            }
            latencies.push(Duration::from_micros(
                agent.stats().last_renewal_us.load(Relaxed),
            ));
        }
        Ok(PhaseReport::new(&mut latencies, failed, elapsed))
    }

    /// The owner root rolls over (`ca root-rollover`): each device takes the new root beside
    /// the old, re-keys under the new issuing CA, then trusts the new root alone once the old
    /// one retires. A device counts once it trusts the new root alone with a certificate under
    /// it; its latency is its re-key.
    pub async fn root_rollover(&self, agents: &[Arc<Agent>]) -> Result<PhaseReport> {
        let updates: Vec<u64> = agents
            .iter()
            .map(|a| a.stats().root_updates.load(Relaxed))
            .collect();
        let renewals: Vec<u64> = agents
            .iter()
            .map(|a| a.stats().renewals.load(Relaxed))
            .collect();
        let bar = self.bar("root rollover", agents.len());
        let start = Instant::now();
        let started = self.api(|api| api.root_rollover()).await?;
        let generation = started.rollover.map_or(started.in_force, |r| r.generation);
        self.settle(
            agents,
            &bar,
            // Two sets taken (old and new, then new) and a re-key, and the set it holds the
            // new root alone (a set delivered twice, by a push and in a welcome, counts twice).
            |i, a| {
                a.stats().root_updates.load(Relaxed) >= updates[i] + 2
                    && a.stats().renewals.load(Relaxed) > renewals[i]
                    && a.load_state().is_ok_and(|s| s.roots().len() == 1)
            },
            // The server is done before the devices have the last set (it is sent after):
            // the devices say when the phase is over.
            |_| Ok(false),
        )
        .await?;
        let elapsed = start.elapsed();
        bar.finish_and_clear();
        let status = self.api(|api| api.roots()).await?;
        let done = status.rollover.is_none() && status.in_force == generation;
        let mut latencies = Vec::new();
        let mut failed = 0;
        for (i, agent) in agents.iter().enumerate() {
            let alone = agent.load_state().map(|s| s.roots().len() == 1);
            if !done
                || !matches!(alone, Ok(true))
                || agent.stats().renewals.load(Relaxed) <= renewals[i]
            {
                tracing::warn!(serial = agent.serial(), "not under the new root alone");
                failed += 1;
                continue;
            }
            latencies.push(Duration::from_micros(
                agent.stats().last_renewal_us.load(Relaxed),
            ));
        }
        Ok(PhaseReport::new(&mut latencies, failed, elapsed))
    }

    /// The manufacturer signs `image` as release `sequence` (version `1.SEQUENCE.0`); the
    /// owner trusts its firmware key, uploads the release and rolls it out to the connected
    /// fleet in waves of 1, 10 and 100 %, the devices downloading over their QUIC session or,
    /// `over_https`, from the HTTPS listener. A device counts once it runs the new version
    /// after its health check; its latency runs from the offer to its health report; `bytes`
    /// adds up what the devices downloaded.
    pub async fn firmware(
        &self,
        agents: &[Arc<Agent>],
        image: Vec<u8>,
        sequence: u64,
        over_https: bool,
    ) -> Result<PhaseReport> {
        use crate::service::{CampaignSpec, Target};
        let version = format!("1.{sequence}.0");
        let m = &self.manufacturer;
        let manifest = m.sign_firmware(
            &image,
            &certs::factory::FirmwareRelease {
                version: &version,
                sequence,
                class_id: None,
                expires_on: None,
                sbom: None,
                support_ends_on: None,
            },
            certs::unix_now(),
        )?;
        let (vendor, key) = (m.config.name.clone(), m.firmware_key().public_pem());
        let release = self
            .api(move |api| {
                api.import_firmware_key(&vendor, &key)?;
                api.upload_release(&manifest, &image, None)
            })
            .await?;
        let bytes_before: u64 = agents
            .iter()
            .map(|a| a.stats().firmware_bytes.load(Relaxed))
            .sum();
        let bar = self.bar("firmware", agents.len());
        let start = Instant::now();
        let campaign = self
            .api(move |api| {
                let c = api.create_campaign(&CampaignSpec {
                    release: release.digest,
                    target: Target::All,
                    waves: vec![1, 10, 100],
                    failure_threshold: 5,
                    rate: None,
                    wave_timeout: None,
                    over_https,
                    signed_urls: false,
                    ramp: None,
                })?;
                api.order_campaign(&c.id, crate::core::campaign::CampaignOrder::Start)
            })
            .await?;
        // A campaign's length follows the image's size and the fleet's, so the phase waits as
        // long as devices keep finishing, and gives up only after DEVICE_DEADLINE without one.
        // Giving up aborts the campaign: left running, it would overlap the next phase.
        let interval = poll_interval(agents.len());
        let mut finished = 0;
        let mut stalled_at = Instant::now() + DEVICE_DEADLINE;
        loop {
            let id = campaign.id.clone();
            let s = self.api(move |api| api.campaign_status(&id, false)).await?;
            if s.state != CampaignState::Running {
                break;
            }
            let now_finished = s.total.healthy + s.total.failed;
            bar.set_position(now_finished as u64);
            if now_finished > finished {
                finished = now_finished;
                stalled_at = Instant::now() + DEVICE_DEADLINE;
            } else if Instant::now() >= stalled_at {
                let id = campaign.id.clone();
                self.api(move |api| {
                    api.order_campaign(&id, crate::core::campaign::CampaignOrder::Abort)
                })
                .await?;
                break;
            }
            tokio::time::sleep(interval).await;
        }
        let elapsed = start.elapsed();
        bar.finish_and_clear();
        let id = campaign.id.clone();
        let status = self.api(move |api| api.campaign_status(&id, true)).await?;
        let by_serial: std::collections::HashMap<&str, &crate::service::DeviceProgress> = status
            .devices
            .iter()
            .map(|p| (p.device.serial.as_str(), p))
            .collect();
        let mut latencies = Vec::new();
        let mut failed = 0;
        for agent in agents {
            let done = by_serial.get(agent.serial()).is_some_and(|p| {
                p.state == "healthy" && p.running.as_deref() == Some(version.as_str())
            });
            if done {
                latencies.push(Duration::from_micros(
                    agent.stats().last_update_us.load(Relaxed),
                ));
            } else {
                if failed < 3 {
                    let why = by_serial.get(agent.serial()).map_or_else(
                        || "not in the campaign".to_string(),
                        |p| {
                            format!(
                                "{} ({})",
                                p.state,
                                p.reason.as_deref().unwrap_or("no reason")
                            )
                        },
                    );
                    eprintln!("{}: not updated: {why}", agent.serial());
                }
                failed += 1;
            }
        }
        let bytes: u64 = agents
            .iter()
            .map(|a| a.stats().firmware_bytes.load(Relaxed))
            .sum();
        let mut report = PhaseReport::new(&mut latencies, failed, elapsed);
        report.bytes = Some(bytes - bytes_before);
        Ok(report)
    }

    /// The end of support of the fleet's class is announced (its notice period begins now):
    /// every connected device is told, records the notice and confirms it. A device's latency
    /// runs from the order to the moment its agent holds the notice; it counts once the server
    /// also has its confirmation.
    pub async fn support_notice(&self, agents: &[Arc<Agent>]) -> Result<PhaseReport> {
        let Some(first) = agents.first() else {
            return Ok(PhaseReport::new(&mut [], 0, Duration::ZERO));
        };
        let serial = first.serial().to_string();
        let class = self
            .api(move |api| api.device(&serial))
            .await?
            .class
            .ok_or_else(|| Error::Config("the fleet reported no device class".into()))?;
        let day = crate::core::support::date(certs::unix_now() + 60 * 86_400);
        let ends_on = crate::core::support::parse_date(&day)
            .ok_or_else(|| Error::Config(format!("{day} is not a day")))?;
        let bar = self.bar("support", agents.len());
        let start = Instant::now();
        let request = crate::operator::api::SupportRequest {
            ends_on: day,
            notice_days: 90,
        };
        self.api(move |api| api.set_support(&class, &request))
            .await?;
        let mut told: Vec<Option<Duration>> = vec![None; agents.len()];
        let deadline = Instant::now() + phase_deadline(agents.len());
        while told.iter().any(Option::is_none) && Instant::now() < deadline {
            for (i, agent) in agents.iter().enumerate() {
                if told[i].is_none()
                    && agent
                        .load_state()
                        .is_ok_and(|s| s.support_ends_on == Some(ends_on))
                {
                    told[i] = Some(start.elapsed());
                }
            }
            bar.set_position(told.iter().flatten().count() as u64);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let elapsed = start.elapsed();
        bar.finish_and_clear();
        let confirmed: std::collections::HashSet<String> = self
            .api(|api| api.devices())
            .await?
            .into_iter()
            .filter(|d| d.support.notice_recorded)
            .map(|d| d.serial)
            .collect();
        let mut latencies = Vec::new();
        let mut failed = 0;
        for (agent, at) in agents.iter().zip(told) {
            match at {
                Some(at) if confirmed.contains(agent.serial()) => latencies.push(at),
                _ => failed += 1,
            }
        }
        Ok(PhaseReport::new(&mut latencies, failed, elapsed))
    }

    /// The operator decommissions `agents`: each device wipes itself, signs an attestation
    /// bound to the server's nonce, and is decommissioned. A device counts once its record says
    /// so, its certificates are on the CRL, the server holds no network credential for it, and
    /// the device is back in its factory state.
    ///
    /// Nobody leaving is an empty phase, not an order the API would refuse.
    pub async fn decommission(&self, agents: &[Arc<Agent>]) -> Result<PhaseReport> {
        if agents.is_empty() {
            return Ok(PhaseReport::new(&mut [], 0, Duration::ZERO));
        }
        let serials: Vec<String> = agents.iter().map(|a| a.serial().to_string()).collect();
        let bar = self.bar("decommission", agents.len());
        let start = Instant::now();
        let order = serials.clone();
        self.api(move |api| {
            api.decommission(
                order,
                protocol::attestation::WipeMethod::PurgeCryptographicErase,
                None,
            )
        })
        .await?;
        // A device has finished its side once the server acknowledged its attestation (it
        // then resets itself); the records checked below say whether the server ruled.
        self.settle(
            agents,
            &bar,
            |_, a| a.stats().decommission_us.load(Relaxed) > 0,
            |api| {
                let stats = api.stats()?;
                Ok(stats.states.get("decommissioning").copied().unwrap_or(0) == 0)
            },
        )
        .await?;
        let elapsed = start.elapsed();
        bar.finish_and_clear();
        let records = self
            .api(move |api| {
                serials
                    .iter()
                    .map(|s| api.device(s))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        // The CRLs are republished shortly after a revocation: wait until they list every
        // certificate of these devices, as a relying party fetching them would see.
        let wanted: Vec<String> = records
            .iter()
            .flat_map(|r| {
                r.certificates
                    .iter()
                    .filter(|c| c.not_after > certs::unix_now())
            })
            .map(|c| c.serial.clone())
            .collect();
        let mut revoked = std::collections::HashSet::new();
        for _ in 0..100 {
            revoked = self
                .api(|api| {
                    let mut revoked = std::collections::HashSet::new();
                    for crl in api.crls()? {
                        let der = api.crl(crl.generation)?;
                        if let Ok((_, parsed)) = x509_parser::parse_x509_crl(&der) {
                            revoked.extend(
                                parsed
                                    .iter_revoked_certificates()
                                    .map(|r| certs::inspect::hex(r.raw_serial())),
                            );
                        }
                    }
                    Ok(revoked)
                })
                .await?;
            if wanted.iter().all(|c| revoked.contains(c)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = certs::unix_now();
        let mut latencies = Vec::new();
        let mut failed = 0;
        for (agent, record) in agents.iter().zip(records) {
            let listed = record
                .certificates
                .iter()
                .filter(|c| c.not_after > now)
                .all(|c| revoked.contains(&c.serial));
            let bare = agent.load_state().is_ok_and(|s| {
                s.phase == device_agent::machine::Phase::Factory && s.ldevid.is_none()
            });
            if record.state == DeviceState::Decommissioned
                && listed
                && record.network.is_none()
                && bare
            {
                latencies.push(Duration::from_micros(
                    agent.stats().decommission_us.load(Relaxed),
                ));
            } else {
                tracing::warn!(serial = agent.serial(), state = %record.state, listed, bare, "not decommissioned");
                failed += 1;
            }
        }
        Ok(PhaseReport::new(&mut latencies, failed, elapsed))
    }
}

/// The MAC address the `index`th device of a fleet reports (locally administered).
pub fn mac_of(index: usize) -> String {
    let b = (index as u32).to_be_bytes();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

/// The LDevID public key a device holds now.
fn current_key(agent: &Agent) -> Option<Vec<u8>> {
    let state = agent.load_state().ok()?;
    let info = certs::CertInfo::parse(state.ldevid.as_ref()?).ok()?;
    Some(info.public_key.raw().to_vec())
}
