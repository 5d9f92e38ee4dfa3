//! THE door: every state change of the onboarder goes through `Service::commit`, the one
//! load -> decide -> commit loop.
//!
//! A caller hands the loop a closure that loads what it needs from the store, asks the core for
//! its decision, and returns the [`Change`] to write with what the device records were before.
//! The loop commits the change atomically and durably; when a concurrent change moved one of the
//! devices meanwhile, the store refuses the whole change and the loop decides again on fresh
//! data. After every commit, and only then, it carries out the effects of the change: revoked or
//! superseded certificates reach the TLS verifier and wake the CRL publisher, firmware jobs reach
//! the campaign engine's index. Decisions over many devices go through the same loop in chunks
//! (`Service::decide_devices`).
//!
//! The files by job: `device` (requests of authenticated devices), `imports` (anchors and
//! vouchers), `orders` (operator orders about devices), `firmware` (keys and releases),
//! `campaigns`, `crls`, `network` (what a RADIUS server asks), `queries` (reads for operators),
//! `support` (support periods), `transparency` (VEX statements and live labels).

mod audit;
mod campaigns;
mod crls;
mod device;
mod error;
mod firmware;
mod history;
mod imports;
mod network;
mod orders;
mod queries;
mod rollover;
mod roots;
mod search;
mod support;
mod transparency;

pub use campaigns::{CampaignSpec, CampaignStatus, DeviceProgress, RampSpec, TICK, Target};
pub use crls::Crl;
pub use device::{Handled, SignedUrl};
pub use error::OperatorError;
pub use history::{HISTORY_FORMAT, HistoryBundle, STATEMENT_CONTENT_TYPE, Statement};
pub use imports::AnchorImport;
pub use network::AccessContext;
pub use orders::{OrderReport, RotationStatus};
pub use queries::{ImportReport, Rejected};
pub use rollover::PendingRollover;
pub use search::{SCAN_BUDGET, SearchPage, search};
pub use transparency::{FixPlan, VexReport};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use protocol::message::Response;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Notify;

use crate::core::audit_budget::AuditBudget;
use crate::core::record::JobState;
use crate::core::{
    CertStatus, Decision, DeviceId, DevicePeer, DeviceRecord, Entropy, LifecycleError, Registrar,
};
use crate::metrics::Metrics;
use crate::store::images::ImageStore;
use crate::store::{Change, DeviceWrite, Expect, Revocation, Store, StoreError};
use crate::trust::TrustStore;

/// How many times a decision is taken again when concurrent changes keep moving its devices.
const MAX_ATTEMPTS: usize = 8;
/// Devices decided on per atomic write in a bulk decision.
const CHUNK: usize = 1000;

/// Where the service reads the time: the system clock, or another one in tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Firmware job states by campaign and device, each with the version of the record that
/// holds it. Commits note the jobs they change; a campaign's other devices are read from the
/// store the first time it is looked at (then it is `loaded`), so a report heard before that
/// look does not stand for the whole campaign.
#[derive(Default)]
struct JobIndex {
    states: HashMap<String, JobStates>,
    loaded: std::collections::HashSet<String>,
}

/// A campaign's job states by device, with the record version each was read or written at.
type JobStates = HashMap<DeviceId, (u64, JobState)>;

impl JobIndex {
    /// Notes `state`, written at `version`, unless a newer version was noted: two commits of
    /// one device (a report and its retry) may finish in one order and note in the other.
    fn note(&mut self, campaign: &str, device: &DeviceId, version: u64, state: &JobState) {
        let states = match self.states.get_mut(campaign) {
            Some(states) => states,
            None => self.states.entry(campaign.to_string()).or_default(),
        };
        match states.get_mut(device) {
            Some(noted) if noted.0 > version => {}
            Some(noted) => *noted = (version, state.clone()),
            None => {
                states.insert(device.clone(), (version, state.clone()));
            }
        }
    }
}

/// The onboarder's one entry point for devices and operators.
pub struct Service {
    store: Arc<dyn Store>,
    images: Arc<dyn ImageStore>,
    registrar: RwLock<Arc<Registrar>>,
    trust: Arc<TrustStore>,
    /// Signalled after a commit that revoked or superseded certificates (the CRL publisher
    /// waits on it).
    revocations_changed: Notify,
    /// Signalled after a commit that moved a firmware job (the campaign engine waits on it).
    firmware_changed: Notify,
    /// Serialises campaign read-modify-writes (operator orders and the engine); holds when
    /// each campaign on a query last looked for devices that came to match it.
    campaigns: tokio::sync::Mutex<HashMap<String, u64>>,
    /// Firmware job states by campaign and device, kept current by every commit, so the
    /// campaign engine does not read every device record at every tick.
    jobs: Mutex<JobIndex>,
    /// Devices by the MAC address they reported (for MAC authorization), built on first use.
    macs: Mutex<Option<network::MacIndex>>,
    /// What was refused and shed.
    metrics: Metrics,
    /// The audit entries devices may cause without changing anything.
    budget: Mutex<AuditBudget>,
    clock: Clock,
    rng: SystemRandom,
    /// The manufacturers' voucher service, if the owner has one.
    masa: Option<Arc<dyn crate::masa::Masa>>,
    /// The key of signed firmware URLs (HMAC-SHA256).
    url_key: ring::hmac::Key,
    /// Told after a commit that changed what every replica keeps in memory (the other
    /// replicas hear of it through it).
    on_shared: std::sync::OnceLock<Box<dyn Fn(Shared) + Send + Sync>>,
    /// Support periods by device class (every hello asks; set rarely).
    support: RwLock<support::Periods>,
    /// Where labels are published when the owner did not say (the HTTPS listener).
    label_home: std::sync::OnceLock<String>,
}

/// What a commit changed that every replica keeps in memory, and must reload when another
/// replica changed it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Shared {
    /// These certificates were revoked or superseded (TLS verifiers, CRLs). The entries
    /// themselves travel, so a replica adds them without reading every revocation again.
    Revoked(Vec<Revocation>),
    /// Manufacturer anchors were imported (TLS verifiers).
    Anchors,
    /// A support period was set (what hellos are answered with).
    Support,
    /// A device's firmware job moved (the campaign engine's index of job states).
    Job {
        /// The campaign.
        campaign: String,
        /// The device.
        device: DeviceId,
        /// Where its job is now.
        state: JobState,
        /// The version of the record that holds it.
        version: u64,
    },
}

/// How the devices' writes move the store's tallies (devices per state, certificates per
/// status): the old record's are taken off, the new one's added.
fn tally_moves(writes: &[DeviceWrite], previous: &[Option<DeviceRecord>]) -> Vec<(String, i64)> {
    let mut moves: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for (i, w) in writes.iter().enumerate() {
        if let Some(before) = previous.get(i).and_then(|p| p.as_ref()) {
            for name in crate::store::tallies_of(before) {
                *moves.entry(name).or_insert(0) -= 1;
            }
        }
        for name in crate::store::tallies_of(&w.record) {
            *moves.entry(name).or_insert(0) += 1;
        }
    }
    moves.into_iter().filter(|(_, n)| *n != 0).collect()
}

/// The device index entries the writes move: the keys of the records they replace that the new
/// records no longer have go, the new records' keys that were not there come.
fn index_moves(
    writes: &[DeviceWrite],
    previous: &[Option<DeviceRecord>],
) -> Vec<(String, Option<DeviceId>)> {
    let mut moves = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        let before = previous
            .get(i)
            .and_then(|p| p.as_ref())
            .map(crate::core::query::index_keys)
            .unwrap_or_default();
        let after = crate::core::query::index_keys(&w.record);
        moves.extend(before.difference(&after).map(|k| (k.clone(), None)));
        moves.extend(
            after
                .difference(&before)
                .map(|k| (k.clone(), Some(w.record.id.clone()))),
        );
    }
    moves
}

/// A change decided inside [`Service::commit`], with the records its device writes replace
/// (for the effects) and what to answer once it is durable.
pub(crate) struct Pending<T> {
    /// What to write.
    pub(crate) change: Change,
    /// The record each device write of `change` replaces, in the same order.
    pub(crate) previous: Vec<Option<DeviceRecord>>,
    /// The answer.
    pub(crate) reply: T,
}

/// What one device's decision came to, in a bulk decision.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The answer.
    pub(crate) response: Response,
    /// Whether its record was written (else nothing changed).
    pub(crate) wrote: bool,
    /// Whether it had a record before.
    pub(crate) existed: bool,
}

impl<T> Pending<T> {
    /// A change that writes no device.
    pub(crate) fn of(change: Change, reply: T) -> Self {
        Pending {
            change,
            previous: Vec::new(),
            reply,
        }
    }
}

impl Service {
    /// A service over `store` and `images`, issuing with `registrar`. The trust store is filled
    /// with the owner roots, the manufacturer anchors and the revocations on record.
    pub fn new(
        store: Arc<dyn Store>,
        images: Arc<dyn ImageStore>,
        registrar: Registrar,
        clock: Clock,
    ) -> Result<Service, StoreError> {
        let service = Service {
            store,
            images,
            registrar: RwLock::new(Arc::new(registrar)),
            trust: Arc::new(TrustStore::default()),
            revocations_changed: Notify::new(),
            firmware_changed: Notify::new(),
            campaigns: tokio::sync::Mutex::new(HashMap::new()),
            jobs: Mutex::new(JobIndex::default()),
            macs: Mutex::new(None),
            metrics: Metrics::default(),
            budget: Mutex::new(AuditBudget::default()),
            clock,
            rng: SystemRandom::new(),
            masa: None,
            url_key: ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &SystemRandom::new())
                .map_err(|_| StoreError::Io("no randomness for the URL key".into()))?,
            on_shared: std::sync::OnceLock::new(),
            support: RwLock::new(support::Periods::new()),
            label_home: std::sync::OnceLock::new(),
        };
        service.reload_support()?;
        service.reload_trust()?;
        service.trust.revoke(service.store.revocations()?);
        Ok(service)
    }

    /// Signs firmware URLs with `key` (kept by the server across restarts; a fresh one per
    /// process otherwise, which only makes URLs of an earlier run invalid).
    pub fn with_url_key(mut self, key: &[u8]) -> Service {
        self.url_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        self
    }

    /// Asks `masa` for a nonced voucher at every voucher request of its maker's devices.
    pub fn with_masa(mut self, masa: Option<Arc<dyn crate::masa::Masa>>) -> Service {
        self.masa = masa;
        self
    }

    /// The current time.
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The clock itself, for a transport that checks certificates at its time.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// The trust anchors and revocations for client certificates (shared with the TLS
    /// verifier).
    pub fn trust(&self) -> Arc<TrustStore> {
        self.trust.clone()
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The firmware image repository.
    pub fn images(&self) -> &Arc<dyn ImageStore> {
        &self.images
    }

    /// The counters of refusals and shed load.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The owner root in force (the one the issuing CA chains to, which vouchers pin), DER.
    pub fn owner_root(&self) -> Vec<u8> {
        self.registrar().owner_root().unwrap_or_default().to_vec()
    }

    /// Calls `tell` after every commit that changed what replicas keep in memory (once set,
    /// it stays).
    pub fn on_shared(&self, tell: impl Fn(Shared) + Send + Sync + 'static) {
        let _ = self.on_shared.set(Box::new(tell));
    }

    fn tell(&self, what: Shared) {
        if let Some(tell) = self.on_shared.get() {
            tell(what);
        }
    }

    /// Takes in what another replica changed: revocations (and wakes the CRL publisher), the
    /// manufacturer anchors (read again from the store), a firmware job's move.
    pub fn reload(&self, what: Shared) -> Result<(), StoreError> {
        match what {
            Shared::Revoked(entries) => {
                self.trust.revoke(entries);
                self.revocations_changed.notify_one();
                Ok(())
            }
            Shared::Anchors => self.reload_trust(),
            Shared::Support => self.reload_support(),
            Shared::Job {
                campaign,
                device,
                state,
                version,
            } => {
                self.jobs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .note(&campaign, &device, version, &state);
                self.firmware_changed.notify_one();
                Ok(())
            }
        }
    }

    /// Reads again from the store everything replicas keep in memory that can be read there
    /// (revocations, anchors): for a replica that may have missed the others' messages.
    pub fn reload_all(&self) -> Result<(), StoreError> {
        self.reload_trust()?;
        self.reload_support()?;
        self.trust.revoke(self.store.revocations()?);
        self.revocations_changed.notify_one();
        Ok(())
    }

    /// Forgets the index of job states (a replica that starts to lead rebuilds it from the
    /// store: what it heard as a follower may have missed the start of a campaign).
    pub fn forget_jobs(&self) {
        *self.jobs.lock().unwrap_or_else(|e| e.into_inner()) = JobIndex::default();
    }

    /// Resolves after a commit revoked or superseded certificates.
    pub async fn revocations_changed(&self) {
        self.revocations_changed.notified().await;
    }

    /// Resolves after a commit moved a firmware job.
    pub async fn firmware_changed(&self) {
        self.firmware_changed.notified().await;
    }

    /// The registrar context in force.
    pub fn registrar(&self) -> Arc<Registrar> {
        self.registrar
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the registrar context (after a CA rollover or a renewal of its certificate).
    pub fn set_registrar(&self, registrar: Registrar) -> Result<(), StoreError> {
        *self.registrar.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(registrar);
        self.reload_trust()
    }

    /// Rebuilds the anchors: the manufacturers' roots, the owner roots in force, and our own
    /// issuing CAs under them (trusting them directly spares every LDevID handshake the check
    /// of the issuing CA's own signature, which we made ourselves).
    fn reload_trust(&self) -> Result<(), StoreError> {
        let makers: Vec<_> = self
            .store
            .anchors()?
            .into_iter()
            .map(|a| (a.maker, a.der))
            .collect();
        let registrar = self.registrar();
        let mut ours = registrar.roots.trusted.clone();
        ours.extend(
            registrar
                .trusted_generations()
                .map(|g| g.ca.cert_der().to_vec()),
        );
        self.trust.replace(&makers, &ours);
        Ok(())
    }

    /// Reads who a client certificate chain (leaf first, already validated by TLS) belongs to.
    pub fn identify(&self, chain: &[Vec<u8>]) -> Result<DevicePeer, LifecycleError> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| LifecycleError::Unauthorized("no client certificate".into()))?;
        let registrar = self.registrar();
        DevicePeer::from_certificate(
            leaf,
            |key_id| registrar.is_ours(key_id),
            || self.trust.maker_of(leaf, intermediates, self.now()),
        )
    }

    /// The one loop: `decide` loads what it needs, decides at the time it is given, and
    /// returns the change; the loop commits it and carries out its effects, or decides again
    /// when a concurrent change got there first.
    pub(crate) async fn commit<T, E: From<StoreError>>(
        &self,
        mut decide: impl FnMut(u64) -> Result<Pending<T>, E>,
    ) -> Result<T, E> {
        for _ in 0..MAX_ATTEMPTS {
            let now = self.now();
            let Pending {
                mut change,
                previous,
                reply,
            } = decide(now)?;
            let grace = self.registrar().policy.superseded_grace;
            let revocations: Vec<Revocation> = change
                .devices
                .iter()
                .zip(previous.iter().chain(std::iter::repeat(&None)))
                .flat_map(|(w, old)| revocations_between(old.as_ref(), &w.record, grace))
                .collect();
            change.revocations.extend(revocations.iter().cloned());
            change
                .tallies
                .extend(tally_moves(&change.devices, &previous));
            change.index.extend(index_moves(&change.devices, &previous));
            let moved_jobs: Vec<Shared> = change
                .devices
                .iter()
                .zip(previous.iter().chain(std::iter::repeat(&None)))
                .filter(|(w, old)| {
                    w.record.firmware_job != old.as_ref().and_then(|o| o.firmware_job.clone())
                })
                .filter_map(|(w, _)| {
                    let job = w.record.firmware_job.as_ref()?;
                    Some(Shared::Job {
                        campaign: job.campaign.clone(),
                        device: w.record.id.clone(),
                        state: job.state.clone(),
                        version: w.expect.written(),
                    })
                })
                .collect();
            let jobs_moved = !moved_jobs.is_empty();
            let written: Vec<DeviceRecord> =
                change.devices.iter().map(|w| w.record.clone()).collect();
            let versions: Vec<u64> = change.devices.iter().map(|w| w.expect.written()).collect();
            let anchors_changed = !change.anchors.is_empty();
            match self.store.commit(change).await {
                Ok(()) => {
                    self.note_jobs(&written, &versions);
                    self.note_macs(&written);
                    if jobs_moved {
                        self.firmware_changed.notify_one();
                    }
                    if !revocations.is_empty() {
                        self.trust.revoke(revocations.iter().cloned());
                        self.revocations_changed.notify_one();
                        self.tell(Shared::Revoked(revocations));
                    }
                    if anchors_changed {
                        self.tell(Shared::Anchors);
                    }
                    for job in moved_jobs {
                        self.tell(job);
                    }
                    return Ok(reply);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict("the records kept changing; retry".into()).into())
    }

    /// Decides on each device of `ids` with `decide` (its record, the time) and commits the
    /// decisions together, `CHUNK` devices per atomic write, through [`Service::commit`].
    /// Returns each device's answer or refusal; the events of a decision that changes nothing
    /// are notes, written within the audit budget.
    pub(crate) async fn decide_devices(
        &self,
        ids: &[DeviceId],
        decide: impl Fn(&DeviceId, Option<DeviceRecord>, u64) -> Result<Decision, LifecycleError>,
    ) -> Result<Vec<Result<Outcome, LifecycleError>>, StoreError> {
        let mut outcomes = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let decided = self
                .commit(|now| {
                    let mut pending = Pending::of(Change::default(), Vec::new());
                    for id in chunk {
                        let record = self.store.device(id)?;
                        let expect = Expect::from(record.as_ref());
                        match decide(id, record.clone(), now) {
                            Ok(decision) => {
                                let Decision {
                                    write,
                                    events,
                                    response,
                                } = decision;
                                let outcome = Outcome {
                                    response,
                                    wrote: write.is_some(),
                                    existed: record.is_some(),
                                };
                                match write {
                                    Some(new) => {
                                        pending.change.audit.extend(events);
                                        pending.change.devices.push(DeviceWrite {
                                            record: new,
                                            expect,
                                        });
                                        pending.previous.push(record);
                                    }
                                    None => pending.change.audit.extend(self.within_budget(
                                        events,
                                        |e| e.action.clone(),
                                        now,
                                    )),
                                }
                                pending.reply.push(Ok(outcome));
                            }
                            Err(e) => pending.reply.push(Err(e)),
                        }
                    }
                    Ok::<_, StoreError>(pending)
                })
                .await?;
            outcomes.extend(decided);
        }
        Ok(outcomes)
    }

    /// Decides on one device and commits the decision (see [`Service::decide_devices`]).
    pub(crate) async fn decide_device(
        &self,
        id: &DeviceId,
        decide: impl Fn(Option<DeviceRecord>, u64) -> Result<Decision, LifecycleError>,
    ) -> Result<Response, LifecycleError> {
        self.decide_devices(std::slice::from_ref(id), |_, record, now| {
            decide(record, now)
        })
        .await
        .map_err(LifecycleError::from)?
        .pop()
        .unwrap_or_else(|| Err(LifecycleError::Unavailable("no decision".into())))
        .map(|outcome| outcome.response)
    }

    /// A fresh nonce for a decommission order.
    fn nonce(&self) -> Result<[u8; protocol::attestation::NONCE_LEN], LifecycleError> {
        let mut nonce = [0u8; protocol::attestation::NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| LifecycleError::Unavailable("no randomness".into()))?;
        Ok(nonce)
    }

    /// Fresh randomness for one issuance.
    fn entropy(&self) -> Result<Entropy, LifecycleError> {
        let mut e = Entropy {
            cert_serial: [0; 16],
            psk: [0; 16],
        };
        self.rng
            .fill(&mut e.cert_serial)
            .and_then(|()| self.rng.fill(&mut e.psk))
            .map_err(|_| LifecycleError::Unavailable("no randomness".into()))?;
        // Positive, non-zero leading byte: a valid DER INTEGER of fixed length.
        e.cert_serial[0] = (e.cert_serial[0] & 0x7f) | 0x01;
        Ok(e)
    }

    /// Records the firmware jobs of records just committed (at `versions`) in the job index.
    fn note_jobs(&self, records: &[DeviceRecord], versions: &[u64]) {
        let mut index = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        for (record, version) in records.iter().zip(versions) {
            if let Some(job) = &record.firmware_job {
                index.note(&job.campaign, &record.id, *version, &job.state);
            }
        }
    }
}

/// The certificates that became revoked or superseded between two versions of a record.
fn revocations_between(
    old: Option<&DeviceRecord>,
    new: &DeviceRecord,
    grace: u64,
) -> Vec<Revocation> {
    new.certificates
        .iter()
        .filter(|c| {
            old.and_then(|o| o.certificate(&c.serial))
                .map(|o| &o.status)
                != Some(&c.status)
        })
        .filter_map(|c| {
            let (reason, revoked_at, effective_at) = match c.status {
                CertStatus::Revoked { reason, at } => (reason, at, at),
                CertStatus::Superseded { at } => {
                    (certs::crl::Reason::Superseded, at, at.saturating_add(grace))
                }
                _ => return None,
            };
            Some(Revocation {
                cert_serial: c.serial.clone(),
                issuer: c.issuer.clone(),
                device: new.id.clone(),
                reason,
                revoked_at,
                effective_at,
                not_after: c.not_after,
            })
        })
        .collect()
}

impl From<StoreError> for LifecycleError {
    fn from(e: StoreError) -> Self {
        LifecycleError::Unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::MakerId;

    #[test]
    fn the_job_index_keeps_the_newest_version_whatever_order_the_notes_come_in() {
        let device = DeviceId::new(MakerId::of_spki(b"maker"), "SN-1").unwrap();
        let mut index = JobIndex::default();
        let state = |index: &JobIndex| index.states["c-1"][&device].clone();
        index.note("c-1", &device, 3, &JobState::Healthy);
        // The report before it, noted late.
        index.note("c-1", &device, 2, &JobState::Installed);
        assert_eq!(state(&index), (3, JobState::Healthy));
        index.note("c-1", &device, 4, &JobState::Offered);
        assert_eq!(state(&index), (4, JobState::Offered));
    }
}
