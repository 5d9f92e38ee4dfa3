//! Summing up what the audit budget left out, now and then, so a flood that stopped is still
//! accounted for.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Control;

/// How often the audit budget's ended windows are summed up.
const AUDIT_FLUSH: Duration = Duration::from_secs(30);

impl Control {
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
}
