//! End-of-support notices: the leader looks now and then for devices whose class's notice
//! period has begun and that have not confirmed it, and pushes them the notice (the others get
//! it in their next welcome).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Control;
use crate::core::support::SupportPeriod;
use crate::service::OperatorError;

/// How often the leader looks for periods whose notice or end came. Support periods are
/// counted in days: a minute late is on time.
const SWEEP: Duration = Duration::from_secs(60);
/// Every how many sweeps the devices of every period in notice are looked through again (for
/// a connected device a push missed; one that connects is told by its welcome): hourly.
const FULL_SWEEP_EVERY: u64 = 60;
/// Notices pushed per second at most (a class may have many devices).
const NOTICE_RATE: u32 = 200;

impl Control {
    /// Sets a class's support period and, if its notice period has begun, tells the devices
    /// that are connected at once.
    pub async fn set_support(
        self: &Arc<Self>,
        period: SupportPeriod,
    ) -> Result<SupportPeriod, OperatorError> {
        let period = self.service.set_support(period).await?;
        if self.is_leader() {
            self.support_sweep(true).await?;
        }
        Ok(period)
    }

    /// One sweep: announces the periods whose notice or end came (once, in the audit log), and
    /// pushes the notice to the devices of their classes still to be told (of those just
    /// announced, or with `all` of every period in notice).
    pub async fn support_sweep(self: &Arc<Self>, all: bool) -> Result<(), OperatorError> {
        for (command, devices) in self.service.support_sweep(all).await? {
            let this = self.clone();
            tokio::spawn(async move { this.push_all(devices, command, Some(NOTICE_RATE)).await });
        }
        Ok(())
    }

    /// Sweeps every [`SWEEP`] on the leader until `stop` turns true.
    pub async fn run_support_notices(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        for round in 0u64.. {
            if self.is_leader()
                && let Err(e) = self.support_sweep(round % FULL_SWEEP_EVERY == 0).await
            {
                tracing::error!("support notices: {e}");
            }
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                () = tokio::time::sleep(SWEEP) => {}
            }
        }
    }
}
