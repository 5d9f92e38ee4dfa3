//! Orders that reach beyond the store: pushing commands to connected devices, rolling the CA
//! over on disk, and publishing CRLs. The admin API and the demo drive the onboarder through
//! this.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use protocol::message::{Command, CommandReply};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};

use super::OperatorError;
use super::orders::{Crl, OrderReport};
use crate::config::{Config, layout};
use crate::core::DeviceId;
use crate::service::Service;
use crate::transport::sessions::Sessions;
use crate::transport::tls::RegistrarIdentity;

/// Commands in flight at once when no rate is given.
const PUSH_CONCURRENCY: usize = 64;
/// The CRL publisher waits this long after a revocation for others to batch with it.
const CRL_DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the audit budget's ended windows are summed up.
const AUDIT_FLUSH: Duration = Duration::from_secs(30);
/// How often the registrar certificate is checked for renewal.
const REGISTRAR_CHECK: Duration = Duration::from_secs(3600);

/// The outcome of a CA rollover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloverReport {
    /// The new issuing CA generation.
    pub generation: u32,
    /// The rotation ordered for every active device.
    pub rotation: OrderReport,
}

/// The running onboarder as operators act on it.
pub struct Control {
    /// The service.
    pub service: Arc<Service>,
    /// Live operational sessions.
    pub sessions: Arc<Sessions>,
    /// Bytes of incomplete device requests the transport holds.
    pub frames: crate::transport::limits::FrameBudget,
    identity: Arc<RegistrarIdentity>,
    dir: PathBuf,
    config: Config,
    crls: RwLock<Vec<Crl>>,
}

impl Control {
    /// Control over the onboarder whose data directory is `dir`.
    pub fn new(
        service: Arc<Service>,
        sessions: Arc<Sessions>,
        frames: crate::transport::limits::FrameBudget,
        identity: Arc<RegistrarIdentity>,
        dir: PathBuf,
        config: Config,
    ) -> Self {
        Control {
            service,
            sessions,
            frames,
            identity,
            dir,
            config,
            crls: RwLock::new(Vec::new()),
        }
    }

    /// Orders a rotation and pushes the command to the devices that are connected, at most
    /// `rate` per second (the others get it when they next connect).
    pub async fn rotate(
        self: &Arc<Self>,
        devices: Option<Vec<DeviceId>>,
        rate: Option<u32>,
    ) -> Result<OrderReport, OperatorError> {
        let report = self.service.request_rotation(devices).await?;
        let this = self.clone();
        let targets = report.accepted.clone();
        tokio::spawn(async move { this.push_all(targets, Command::Rotate, rate).await });
        Ok(report)
    }

    async fn push_all(
        self: Arc<Self>,
        devices: Vec<DeviceId>,
        command: Command,
        rate: Option<u32>,
    ) {
        let limit = Arc::new(Semaphore::new(PUSH_CONCURRENCY));
        let mut tick = rate
            .filter(|r| *r > 0)
            .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(r))));
        for device in devices {
            if !self.sessions.is_connected(&device) {
                continue;
            }
            if let Some(tick) = &mut tick {
                tick.tick().await;
            }
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let (sessions, command) = (self.sessions.clone(), command.clone());
            tokio::spawn(async move {
                match sessions.push(&device, &command).await {
                    Ok(CommandReply::Accepted) => {}
                    Ok(other) => tracing::info!(%device, "command answered {other:?}"),
                    // The device gets the order in its next welcome.
                    Err(e) => tracing::debug!(%device, "push failed: {e}"),
                }
                drop(permit);
            });
        }
    }

    /// Orders devices to wipe themselves, and pushes the order (with each device's own nonce)
    /// to those connected; the others find it in their next welcome.
    pub async fn decommission(
        self: &Arc<Self>,
        devices: Vec<DeviceId>,
        method: protocol::attestation::WipeMethod,
    ) -> Result<OrderReport, OperatorError> {
        let report = self.service.decommission(devices, method).await?;
        let this = self.clone();
        let targets = report.accepted.clone();
        tokio::spawn(async move {
            let limit = Arc::new(Semaphore::new(PUSH_CONCURRENCY));
            for device in targets {
                let order = match this.service.device(&device) {
                    Ok(r) => r.decommission,
                    Err(_) => None,
                };
                let Some(order) = order else { continue };
                if !this.sessions.is_connected(&device) {
                    continue;
                }
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let sessions = this.sessions.clone();
                tokio::spawn(async move {
                    let command = Command::Decommission {
                        nonce: order.nonce,
                        method: order.method,
                    };
                    if let Err(e) = sessions.push(&device, &command).await {
                        tracing::debug!(%device, "decommission order not pushed: {e}");
                    }
                    drop(permit);
                });
            }
        });
        Ok(report)
    }

    /// Decommissions a device that never answers: every credential revoked, marked
    /// decommissioned-unattested; its session (if any) ends and the CRLs are republished.
    pub async fn force_decommission(
        &self,
        device: &DeviceId,
        reason: &str,
    ) -> Result<crate::core::DeviceRecord, OperatorError> {
        let record = self.service.force_decommission(device, reason).await?;
        self.sessions.close(device, "decommissioned");
        self.publish_crls().await?;
        Ok(record)
    }

    /// Revokes a device's certificates, quarantines it, ends its session, and publishes the
    /// CRLs before returning, so the revocation is visible everywhere when the operator sees
    /// it done.
    pub async fn revoke(
        &self,
        device: &DeviceId,
        reason: certs::crl::Reason,
    ) -> Result<crate::core::DeviceRecord, OperatorError> {
        let record = self.service.revoke(device, reason).await?;
        self.sessions.close(device, "revoked");
        self.publish_crls().await?;
        Ok(record)
    }

    /// Quarantines a device and ends its session.
    pub async fn quarantine(
        &self,
        device: &DeviceId,
        reason: &str,
    ) -> Result<crate::core::DeviceRecord, OperatorError> {
        let record = self.service.quarantine(device, reason).await?;
        self.sessions.close(device, "quarantined");
        Ok(record)
    }

    /// Resets a device stuck in onboarding (see [`Service::reset_onboarding`]) and publishes
    /// the CRLs when that revoked a certificate.
    pub async fn reset_onboarding(
        &self,
        device: &DeviceId,
        reason: &str,
    ) -> Result<crate::core::DeviceRecord, OperatorError> {
        let record = self.service.reset_onboarding(device, reason).await?;
        self.sessions.close(device, "onboarding reset");
        self.publish_crls().await?;
        Ok(record)
    }

    /// Writes the summaries of the audit budget's ended windows every half window, until
    /// `stop` turns true.
    pub async fn run_audit_budget(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        self.service.flush_audit_budget().await;
                        return;
                    }
                }
                () = tokio::time::sleep(AUDIT_FLUSH) => self.service.flush_audit_budget().await,
            }
        }
    }

    /// Rolls the issuing CA over: a new generation under the owner root issues from now on,
    /// every active device is ordered to re-key (so each ends on a certificate of the new CA),
    /// and the old CA keeps publishing its CRL until its certificates have expired.
    pub async fn rollover(
        self: &Arc<Self>,
        rate: Option<u32>,
    ) -> Result<RolloverReport, OperatorError> {
        let (dir, config, now) = (self.dir.clone(), self.config.clone(), self.service.now());
        let pki = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let generation = crate::pki::rollover(&dir, &config, now)?;
            Ok((generation, crate::pki::load(&dir, &config)?))
        })
        .await
        .map_err(|e| OperatorError::Internal(e.to_string()))?
        .map_err(|e| OperatorError::Internal(format!("{e:#}")))?;
        let (generation, pki) = pki;
        self.service.set_registrar(pki.registrar)?;
        self.audit(
            "ca-rollover",
            format!("issuing CA generation {generation} in force"),
            now,
        )
        .await?;
        self.publish_crls().await?;
        // Our own certificate moves to the new generation too. A failure must not keep the
        // fleet from its rotation: the hourly check tries again.
        if let Err(e) = self.renew_registrar().await {
            tracing::error!("after the rollover: {e}");
        }
        let rotation = self.rotate(None, rate).await?;
        Ok(RolloverReport {
            generation,
            rotation,
        })
    }

    /// Re-issues the registrar's TLS certificate when it is due (two thirds of its lifetime,
    /// or issued by a retired CA generation) and presents it from the next handshake on.
    /// Returns whether it did.
    pub async fn renew_registrar(&self) -> Result<bool, OperatorError> {
        let (dir, config, now) = (self.dir.clone(), self.config.clone(), self.service.now());
        let renewed = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let pki = crate::pki::load(&dir, &config)?;
            if !crate::pki::registrar_due(&pki, now)? {
                return Ok(None);
            }
            crate::pki::renew_registrar(&dir, &config, &pki, now)?;
            Ok(Some(crate::pki::load(&dir, &config)?))
        })
        .await
        .map_err(|e| OperatorError::Internal(e.to_string()))?
        .map_err(|e| {
            OperatorError::Internal(format!("renewing the registrar certificate: {e:#}"))
        })?;
        let Some(mut pki) = renewed else {
            return Ok(false);
        };
        self.identity
            .replace(&pki.server_chain, &pki.server_key)
            .map_err(|e| {
                OperatorError::Internal(format!("the renewed registrar certificate: {e}"))
            })?;
        pki.registrar.previous_registrar_cert =
            Some(self.service.registrar().registrar_cert.clone());
        let leaf = certs::CertInfo::parse(&pki.server_chain[0])
            .map_err(|e| OperatorError::Internal(e.to_string()))?;
        let generation = pki.registrar.issuing.generation;
        self.service.set_registrar(pki.registrar)?;
        self.audit(
            "registrar-renewed",
            format!(
                "TLS certificate {} under issuing CA generation {generation}, valid until {}",
                leaf.serial_hex, leaf.not_after
            ),
            now,
        )
        .await?;
        Ok(true)
    }

    /// Appends an operator event about the onboarder itself to the audit log.
    async fn audit(&self, action: &str, detail: String, now: u64) -> Result<(), OperatorError> {
        let event = crate::audit::AuditEvent::operator(None, action, detail, now);
        self.service
            .store
            .commit(crate::store::Change {
                audit: vec![event],
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Renews the registrar certificate when due: at start (the server may have been down for
    /// long) and every hour.
    pub async fn run_registrar_renewal(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.renew_registrar().await {
                tracing::error!("{e}");
            }
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                () = tokio::time::sleep(REGISTRAR_CHECK) => {}
            }
        }
    }

    /// Signs and writes fresh CRLs (`DIR/crl/issuing-ca-N.crl`, PEM) and keeps them for the
    /// HTTP endpoint. Returns when a grace period next ends.
    pub async fn publish_crls(&self) -> Result<Option<u64>, OperatorError> {
        let (crls, next_change) = self.service.build_crls(self.config.crl_validity).await?;
        let dir = self.dir.clone();
        let written = crls.clone();
        tokio::task::spawn_blocking(move || {
            for crl in &written {
                let pem = certs::files::pem_block("X509 CRL", &crl.der);
                if let Err(e) = certs::files::write_private(
                    &dir.join(layout::crl(crl.generation)),
                    pem.as_bytes(),
                ) {
                    tracing::error!("writing the CRL: {e}");
                }
            }
        })
        .await
        .map_err(|e| OperatorError::Internal(e.to_string()))?;
        *self.crls.write().unwrap_or_else(|e| e.into_inner()) = crls;
        Ok(next_change)
    }

    /// The CRLs last published.
    pub fn crls(&self) -> Vec<Crl> {
        self.crls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs the campaign engine until `stop` turns true: every tick, or sooner after a device's
    /// firmware report, it advances the running campaigns and pushes their offers to the
    /// devices that are connected (the others find them in their next welcome).
    pub async fn run_campaigns(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let tick = Duration::from_secs_f64(super::firmware::TICK);
        loop {
            match self.service.campaign_tick().await {
                Ok(pushes) => {
                    for (device, command) in pushes {
                        if !self.sessions.is_connected(&device) {
                            continue;
                        }
                        let sessions = self.sessions.clone();
                        tokio::spawn(async move {
                            if let Err(e) = sessions.push(&device, &command).await {
                                tracing::debug!(%device, "update offer not pushed: {e}");
                            }
                        });
                    }
                }
                Err(e) => tracing::error!("campaign engine: {e}"),
            }
            // One tick looks at every device of the running campaigns, so ticks are spaced by
            // `tick` whatever the rate of reports; a report only wakes an idle engine early.
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                () = tokio::time::sleep(tick) => {}
            }
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                () = tokio::time::sleep(tick * 8) => {}
                () = self.service.firmware_changed.notified() => {}
            }
        }
    }

    /// Publishes CRLs now, after every revocation, when a grace period ends, and at half their
    /// validity, until `stop` turns true.
    pub async fn run_crl_publisher(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let refresh = Duration::from_secs((self.config.crl_validity / 2).max(1));
        loop {
            let next_change = match self.publish_crls().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!("publishing CRLs: {e}");
                    None
                }
            };
            let now = self.service.now();
            let wait = next_change
                .map(|at| Duration::from_secs(at.saturating_sub(now).max(1)))
                .map_or(refresh, |d| d.min(refresh));
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                () = tokio::time::sleep(wait) => {}
                () = self.service.revocations_changed.notified() => {
                    tokio::time::sleep(CRL_DEBOUNCE).await;
                }
            }
        }
    }
}
