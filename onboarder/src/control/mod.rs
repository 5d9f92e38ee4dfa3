//! The running onboarder as operators act on it: orders that reach beyond the store (pushing
//! commands to connected devices, ending sessions, publishing CRLs, the CA on disk) and the
//! background loops. Every state change is the service's; this only carries out what follows.
//!
//! - `push`: commands to connected devices; `crls`: the CRL publisher;
//!   `rollover`: the issuing CA rollover and the registrar's certificate; `roots`: the
//!   owner-root rollover;
//!   `campaigns`: the campaign engine; `support`: end-of-support notices; `audit`: the audit
//!   budget's summaries; `replicas`:
//!   several onboarders on one database (commands relayed, the work that runs once).

mod audit;
mod campaigns;
mod crls;
mod push;
mod replicas;
mod rollover;
mod roots;
mod support;

pub use replicas::{LEASE_RENEW, LEASE_TTL};
pub use rollover::RolloverReport;
pub use roots::RootStatus;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use protocol::message::Command;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::core::DeviceId;
use crate::service::{Crl, OperatorError, OrderReport, Service};
use crate::transport::sessions::Sessions;
use crate::transport::tls::RegistrarIdentity;

/// Runs PKI file work (reading, writing, signing) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> Result<T, OperatorError> {
    off_workers(move || work().map_err(|e| OperatorError::Internal(e.to_string()))).await
}

/// Runs `read` on the blocking pool. A read that visits every device or audit entry takes
/// long at fleet scale, and on one of the runtime's workers it holds up the device listeners
/// that share them: at 100,000 devices, a rotation status asked once a second took half of
/// the server's CPU there.
pub(crate) async fn off_workers<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, OperatorError> + Send + 'static,
) -> Result<T, OperatorError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| OperatorError::Internal(e.to_string()))?
}

/// The running onboarder as operators act on it.
pub struct Control {
    /// The service.
    pub service: Arc<Service>,
    /// Live operational sessions.
    pub sessions: Arc<Sessions>,
    /// What the device listeners hold (incomplete requests, firmware chunks).
    pub budgets: crate::transport::limits::Budgets,
    identity: Arc<RegistrarIdentity>,
    dir: PathBuf,
    config: Config,
    crls: RwLock<Vec<Crl>>,
    /// One CRL publication at a time, so that the files and the CRLs served are the same
    /// (and the newest).
    publishing: tokio::sync::Mutex<()>,
    /// One rollover at a time.
    rollovers: tokio::sync::Mutex<()>,
    /// One step of the owner-root rollover at a time.
    root_steps: tokio::sync::Mutex<()>,
    /// This replica among the others on its database.
    replicas: replicas::Replicas,
}

impl Control {
    /// Control over the onboarder whose data directory is `dir`.
    pub fn new(
        service: Arc<Service>,
        sessions: Arc<Sessions>,
        budgets: crate::transport::limits::Budgets,
        identity: Arc<RegistrarIdentity>,
        dir: PathBuf,
        config: Config,
        relay: Option<Arc<dyn crate::store::Relay>>,
    ) -> Self {
        let replicas = replicas::Replicas::new(relay);
        service.on_shared(replicas.teller());
        Control {
            service,
            sessions,
            budgets,
            identity,
            dir,
            config,
            crls: RwLock::new(Vec::new()),
            publishing: tokio::sync::Mutex::new(()),
            rollovers: tokio::sync::Mutex::new(()),
            root_steps: tokio::sync::Mutex::new(()),
            replicas,
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

    /// Orders devices to wipe themselves, and pushes the order (with each device's own nonce)
    /// to those connected; the others find it in their next welcome.
    pub async fn decommission(
        self: &Arc<Self>,
        devices: Vec<DeviceId>,
        method: protocol::attestation::WipeMethod,
    ) -> Result<OrderReport, OperatorError> {
        self.decommission_exporting(devices, method, None).await
    }

    /// [`Control::decommission`], the devices handing their application data back first,
    /// encrypted to the age recipient `export_to`.
    pub async fn decommission_exporting(
        self: &Arc<Self>,
        devices: Vec<DeviceId>,
        method: protocol::attestation::WipeMethod,
        export_to: Option<String>,
    ) -> Result<OrderReport, OperatorError> {
        let report = self
            .service
            .decommission(&devices, method, export_to.as_deref())
            .await?;
        let this = self.clone();
        let targets = report.accepted.clone();
        tokio::spawn(async move {
            let limit = Arc::new(Semaphore::new(push::PUSH_CONCURRENCY));
            for device in targets {
                let order = match this.service.device(&device) {
                    Ok(r) => r.decommission,
                    Err(_) => None,
                };
                let Some(order) = order else { continue };
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let this = this.clone();
                tokio::spawn(async move {
                    let command = Command::Decommission {
                        nonce: order.nonce,
                        method: order.method,
                        export_to: order.export_to,
                    };
                    this.deliver(&device, &command).await;
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
        self.close_everywhere(device, "decommissioned");
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
        self.close_everywhere(device, "revoked");
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
        self.close_everywhere(device, "quarantined");
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
        self.close_everywhere(device, "onboarding reset");
        self.publish_crls().await?;
        Ok(record)
    }
}
