//! The owner's CAs on disk as they change while the server runs: the rollover of the issuing
//! CA (a decision recorded by the service first, then carried out step by step, and finished at
//! start if the server died in the middle), and the renewal of the registrar's own TLS
//! certificate.

use std::sync::Arc;
use std::time::Duration;

use protocol::message::Command;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Control, blocking};
use crate::audit::AuditEvent;
use crate::failpoint;
use crate::service::{OperatorError, OrderReport, PendingRollover};

/// How often the registrar certificate is checked for renewal.
const REGISTRAR_CHECK: Duration = Duration::from_secs(3600);

/// The outcome of a CA rollover.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloverReport {
    /// The new issuing CA generation.
    pub generation: u32,
    /// The rotation ordered for every active device on an older generation.
    pub rotation: OrderReport,
}

impl Control {
    /// Rolls the issuing CA over: a new generation under the owner root issues from now on,
    /// every active device on an older generation is ordered to re-key (so each ends on a
    /// certificate of the new CA), and the old CA keeps publishing its CRL until its
    /// certificates have expired. The decision is durable before anything else is done; a
    /// rollover left half done by a crash is finished first (see [`Control::resume`]).
    pub async fn rollover(
        self: &Arc<Self>,
        rate: Option<u32>,
    ) -> Result<RolloverReport, OperatorError> {
        let _one_at_a_time = self.rollovers.lock().await;
        if let Some(pending) = self.service.pending_rollover()? {
            self.carry_out(pending, rate).await?;
        }
        // Under a new owner root only once the devices have it (`roots`).
        if let Some(r) = self.service.pending_root_rollover()?
            && r.phase == crate::core::roots::RootPhase::Distributing
        {
            return Err(OperatorError::BadInput(format!(
                "owner root {} is being distributed: the issuing CA moves under it when every \
                 device has it (onboarder ca root-status)",
                r.generation
            )));
        }
        let target = self.service.registrar().issuing.generation + 1;
        let pending = self.service.begin_rollover(target).await?;
        failpoint::hit("rollover-decided");
        self.carry_out(pending, rate).await
    }

    /// Finishes what a crash interrupted: a rollover decided and not carried out. Called at
    /// start.
    pub async fn resume(self: &Arc<Self>) -> Result<(), OperatorError> {
        let _one_at_a_time = self.rollovers.lock().await;
        if let Some(pending) = self.service.pending_rollover()? {
            tracing::warn!(
                generation = pending.generation,
                "finishing the CA rollover a crash interrupted"
            );
            self.carry_out(pending, None).await?;
        }
        Ok(())
    }

    /// The steps of a decided rollover, each of which can be done again.
    async fn carry_out(
        self: &Arc<Self>,
        pending: PendingRollover,
        rate: Option<u32>,
    ) -> Result<RolloverReport, OperatorError> {
        let (dir, config, now) = (self.dir.clone(), self.config.clone(), self.service.now());
        let pki = blocking(move || {
            crate::pki::rollover_to(&dir, &config, pending.generation, now)?;
            crate::pki::load(&dir, &config)
        })
        .await?;
        failpoint::hit("rollover-files");
        self.adopt(pki)?;
        self.publish_crls().await?;
        // Our own certificate moves to the new generation too. A failure must not keep the
        // fleet from its rotation: the hourly check tries again.
        if let Err(e) = self.renew_registrar().await {
            tracing::error!("after the rollover: {e}");
        }
        failpoint::hit("rollover-renewed");
        let rotation = self.service.rotate_onto_current_ca().await?;
        failpoint::hit("rollover-ordered");
        self.service
            .end_rollover(pending, rotation.accepted.len())
            .await?;
        let this = self.clone();
        let targets = rotation.accepted.clone();
        tokio::spawn(async move { this.push_all(targets, Command::Rotate, rate).await });
        Ok(RolloverReport {
            generation: pending.generation,
            rotation,
        })
    }

    /// Re-issues the registrar's TLS certificate when it is due (two thirds of its lifetime,
    /// or issued by a retired CA generation) and presents it from the next handshake on.
    /// Returns whether it did.
    pub async fn renew_registrar(&self) -> Result<bool, OperatorError> {
        let (dir, config, now) = (self.dir.clone(), self.config.clone(), self.service.now());
        let renewed = blocking(move || {
            let pki = crate::pki::load(&dir, &config)?;
            if !crate::pki::registrar_due(&pki, now)? {
                return Ok(None);
            }
            crate::pki::renew_registrar(&dir, &config, &pki, now)?;
            Ok(Some(crate::pki::load(&dir, &config)?))
        })
        .await
        .map_err(|e| OperatorError::Internal(format!("renewing the registrar certificate: {e}")))?;
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
        self.relay_pki();
        self.service
            .audit(AuditEvent::operator(
                None,
                "registrar-renewed",
                format!(
                    "TLS certificate {} under issuing CA generation {generation}, valid until {}",
                    leaf.serial_hex, leaf.not_after
                ),
                now,
            ))
            .await?;
        Ok(true)
    }

    /// Renews the registrar certificate when due: at start (the server may have been down for
    /// long) and every hour.
    pub async fn run_registrar_renewal(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if self.is_leader()
                && let Err(e) = self.renew_registrar().await
            {
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
}
