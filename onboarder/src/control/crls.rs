//! Publishing CRLs: signed by the service, written to `DIR/crl/issuing-ca-N.crl` (and into
//! the RADIUS server's CA directory, when there is one) and kept for the HTTP endpoint; at once after a revocation, when a grace period ends, and at half
//! their validity.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Control;
use crate::config::layout;
use crate::service::{Crl, OperatorError};

/// The CRL publisher waits this long after a revocation for others to batch with it.
const CRL_DEBOUNCE: Duration = Duration::from_millis(100);

impl Control {
    /// Signs and writes fresh CRLs (`DIR/crl/issuing-ca-N.crl`, PEM) and keeps them for the
    /// HTTP endpoint. Returns when a grace period next ends.
    pub async fn publish_crls(&self) -> Result<Option<u64>, OperatorError> {
        // Two publications at once (a revocation's and the publisher's) could leave the older
        // CRL on disk and the newer one served.
        let _one_at_a_time = self.publishing.lock().await;
        // The leader signs; the other replicas serve what it published.
        let (crls, next_change) = if self.is_leader() {
            let built = self.service.build_crls(self.config.crl_validity).await?;
            self.relay_crls();
            built
        } else {
            (self.service.published_crls()?, None)
        };
        let dir = self.dir.clone();
        let written = crls.clone();
        let radius = self.config.radius.clone();
        let registrar = self.service.registrar();
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
            if let Some(radius) = radius {
                let crls: Vec<(u32, Vec<u8>)> = written
                    .iter()
                    .map(|c| (c.generation, c.der.clone()))
                    .collect();
                if let Err(e) = crate::radius::write_ca_dir(&radius, &registrar, &crls) {
                    tracing::error!("writing the RADIUS server's CA directory: {e}");
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

    /// The CRL published as `file` (`issuing-ca-N.crl`, the name every certificate's CRL
    /// distribution point gives), DER.
    pub fn crl_file(&self, file: &str) -> Option<Vec<u8>> {
        let generation = file
            .strip_prefix("issuing-ca-")
            .and_then(|f| f.strip_suffix(".crl"))
            .and_then(|n| n.parse::<u32>().ok())?;
        self.crls
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|c| c.generation == generation)
            .map(|c| c.der.clone())
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
                // Followers publish what the leader signed, when it tells them; one that
                // starts to lead signs at once.
                () = self.service.revocations_changed(), if self.is_leader() => {
                    tokio::time::sleep(CRL_DEBOUNCE).await;
                }
                () = self.leading(), if !self.is_leader() => {}
            }
        }
    }
}
