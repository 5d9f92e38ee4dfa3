//! The owner-root rollover carried out (the rules are `core::roots`, the durable decision is
//! the service's): the new root is made and sent to every device, then the issuing CA and the
//! registrar move under it (an issuing CA rollover), then the old root retires once nothing
//! chains to it. A background loop looks at a rollover under way every [`ROOT_TICK`] and takes
//! the next step when the fleet allows; every step can be done again, so a server that died in
//! the middle goes on where it was.

use std::sync::Arc;
use std::time::Duration;

use protocol::message::Command;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::sync::watch;

use super::{Control, blocking};
use crate::core::DeviceState;
use crate::core::roots::{RootPhase, RootProgress, RootRollover, RootStep};
use crate::failpoint;
use crate::service::OperatorError;

/// How often a rollover under way is looked at.
const ROOT_TICK: Duration = Duration::from_secs(2);
/// Devices named in a status, at most (the counts are whole).
const NAMED: usize = 20;

/// Where the owner roots stand.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootStatus {
    /// The root generation the issuing CA is under (what vouchers pin).
    pub in_force: u32,
    /// The root generations devices are to trust.
    pub trusted: usize,
    /// The rollover under way, if any.
    pub rollover: Option<RootRollover>,
    /// Active devices that have not confirmed the roots in force.
    pub awaiting_anchors: usize,
    /// Devices with a certificate under the old root still accepted.
    pub under_old_root: usize,
    /// Expected devices whose voucher pins the old root.
    pub vouchers_for_old_root: usize,
    /// Some of the devices that hold the rollover, for the operator to look at.
    pub holding: Vec<String>,
}

impl Control {
    /// Starts an owner-root rollover: decided (durably, audited), then the new root is made
    /// and sent to the devices; the background loop does the rest. Refused while one is under
    /// way. Needs the key of the root in force.
    pub async fn root_rollover(self: &Arc<Self>) -> Result<RootStatus, OperatorError> {
        {
            // The steps' lock first (as a step that moves the CA takes the rollovers' after
            // it), so the loop does not step a rollover half started.
            let _no_step = self.root_steps.lock().await;
            let _one_at_a_time = self.rollovers.lock().await;
            if let Some(r) = self.service.pending_root_rollover()? {
                return Err(OperatorError::BadInput(format!(
                    "an owner-root rollover to root {} is under way ({})",
                    r.generation, r.phase
                )));
            }
            let dir = self.dir.clone();
            let (_, newest) = blocking(move || crate::pki::root_generations(&dir)).await?;
            let rollover = self.service.begin_root_rollover(newest + 1).await?;
            failpoint::hit("root-rollover-decided");
            self.publish_new_root(rollover).await?;
        }
        self.step_root_rollover().await?;
        self.root_status()
    }

    /// Where the owner roots stand, with what holds a rollover under way.
    pub fn root_status(&self) -> Result<RootStatus, OperatorError> {
        let registrar = self.service.registrar();
        let rollover = self.service.pending_root_rollover()?;
        let progress = match &rollover {
            Some(r) => self.service.root_progress(&self.old_root(r)?)?,
            None => RootProgress::default(),
        };
        let holding = match rollover.map(|r| r.phase) {
            Some(RootPhase::Distributing) => progress.awaiting_anchors.iter().collect(),
            Some(_) => progress
                .under_old_root
                .iter()
                .chain(&progress.vouchers_for_old_root)
                .collect(),
            None => Vec::new(),
        };
        let dir = self.dir.clone();
        let (in_force, _) = crate::pki::root_generations(&dir)
            .map_err(|e| OperatorError::Internal(e.to_string()))?;
        Ok(RootStatus {
            in_force,
            trusted: registrar.roots.trusted.len(),
            rollover,
            awaiting_anchors: progress.awaiting_anchors.len(),
            under_old_root: progress.under_old_root.len(),
            vouchers_for_old_root: progress.vouchers_for_old_root.len(),
            holding: holding
                .into_iter()
                .take(NAMED)
                .map(|d| d.to_string())
                .collect(),
        })
    }

    /// Looks at the rollover under way, if any, every [`ROOT_TICK`].
    pub async fn run_root_rollover(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if self.is_leader()
                && let Err(e) = self.step_root_rollover().await
            {
                tracing::error!("owner-root rollover: {e}");
            }
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                () = tokio::time::sleep(ROOT_TICK) => {}
            }
        }
    }

    /// Takes the next step of the rollover under way, if the fleet allows it.
    async fn step_root_rollover(self: &Arc<Self>) -> Result<(), OperatorError> {
        let _one_at_a_time = self.root_steps.lock().await;
        let Some(mut rollover) = self.service.pending_root_rollover()? else {
            return Ok(());
        };
        if rollover.phase == RootPhase::Distributing {
            // Finishes a start a crash interrupted; nothing when it is done.
            self.publish_new_root(rollover).await?;
        }
        let old_root = self.old_root(&rollover)?;
        let service = self.service.clone();
        let progress = super::off_workers(move || service.root_progress(&old_root)).await?;
        let wait = self.service.registrar().policy.root_distribution_wait;
        match rollover.next_step(&progress, self.service.now(), wait) {
            RootStep::Wait if rollover.phase == RootPhase::Distributing => {
                // A push may have been lost (a session that ended just then): again, to the
                // devices connected now.
                self.send_roots(progress.awaiting_anchors).await
            }
            RootStep::Wait => Ok(()),
            RootStep::Move => {
                if rollover.phase == RootPhase::Distributing {
                    let detail = format!(
                        "{} active devices had not taken the new root",
                        progress.awaiting_anchors.len()
                    );
                    rollover = self
                        .service
                        .enter_root_phase(rollover, RootPhase::Moving, detail)
                        .await?;
                    failpoint::hit("root-rollover-moving");
                }
                self.move_under_new_root(rollover).await
            }
            RootStep::Retire => self.retire_old_root(rollover).await,
        }
    }

    /// The certificate of the root the rollover retires.
    fn old_root(&self, rollover: &RootRollover) -> Result<Vec<u8>, OperatorError> {
        crate::pki::root_cert(&self.dir, rollover.generation - 1)
            .map_err(|e| OperatorError::Internal(e.to_string()))
    }

    /// Makes the new root (if it is not made yet), puts it in force beside the old one (the
    /// handshake's trust, EST `cacerts`) and sends both to the devices connected.
    async fn publish_new_root(
        self: &Arc<Self>,
        rollover: RootRollover,
    ) -> Result<(), OperatorError> {
        if self.service.registrar().roots.trusted.len() > 1 {
            return Ok(());
        }
        let (dir, config, now) = (self.dir.clone(), self.config.clone(), self.service.now());
        let pki = blocking(move || {
            crate::pki::begin_root(&dir, &config, rollover.generation, now)?;
            crate::pki::load(&dir, &config)
        })
        .await?;
        failpoint::hit("root-rollover-files");
        self.adopt(pki)?;
        let active = self.service.devices_in(DeviceState::Active)?;
        self.send_roots(active).await
    }

    /// Sends the roots in force to those of `devices` that are connected, and records who
    /// took them.
    async fn send_roots(
        self: &Arc<Self>,
        devices: Vec<crate::core::DeviceId>,
    ) -> Result<(), OperatorError> {
        let roots = self.service.registrar().roots.clone();
        let command = Command::TrustAnchors {
            anchors: roots.trusted.iter().cloned().map(ByteBuf::from).collect(),
        };
        let took = self.clone().push_all(devices, command, None).await;
        self.service.anchors_accepted(&took, roots.digest).await
    }

    /// The issuing CA and the registrar move under the new root: an issuing CA rollover (with
    /// its own durable decision), after which every device re-keys onto it.
    async fn move_under_new_root(
        self: &Arc<Self>,
        rollover: RootRollover,
    ) -> Result<(), OperatorError> {
        let new_root = crate::pki::root_cert(&self.dir, rollover.generation)
            .map_err(|e| OperatorError::Internal(e.to_string()))?;
        let moved = self.service.registrar().owner_root() == Some(new_root.as_slice());
        let ordered = if moved {
            0
        } else {
            self.rollover(None).await?.rotation.accepted.len()
        };
        self.service
            .enter_root_phase(
                rollover,
                RootPhase::Retiring,
                format!(
                    "the issuing CA is under owner root {}; {ordered} devices ordered to re-key",
                    rollover.generation
                ),
            )
            .await?;
        Ok(())
    }

    /// Nothing chains to the old root any more: out of the server's trust, EST and the
    /// registrar's chain, its key deleted, and the devices connected told to trust the new root
    /// alone (the others learn it in their next welcome).
    async fn retire_old_root(
        self: &Arc<Self>,
        rollover: RootRollover,
    ) -> Result<(), OperatorError> {
        let (dir, config, now) = (self.dir.clone(), self.config.clone(), self.service.now());
        let pki = blocking(move || {
            crate::pki::retire_root(&dir, rollover.generation - 1, now)?;
            crate::pki::load(&dir, &config)
        })
        .await?;
        failpoint::hit("root-rollover-retired");
        self.adopt(pki)?;
        self.service.end_root_rollover(rollover).await?;
        let active = self.service.devices_in(DeviceState::Active)?;
        self.send_roots(active).await
    }

    /// Puts a PKI loaded from disk in force: the registrar context (the handshake's trust with
    /// it) and the chain the registrar presents.
    pub(super) fn adopt(&self, pki: crate::pki::Pki) -> Result<(), OperatorError> {
        self.identity
            .replace(&pki.server_chain, &pki.server_key)
            .map_err(|e| OperatorError::Internal(format!("the registrar certificate: {e}")))?;
        let mut registrar = pki.registrar;
        registrar.previous_registrar_cert =
            self.service.registrar().previous_registrar_cert.clone();
        self.service.set_registrar(registrar)?;
        // The leader changed the PKI on disk: the other replicas take it from there.
        if self.is_leader() {
            self.relay_pki();
        }
        Ok(())
    }
}
