//! The campaign engine: steps the running campaigns and pushes their offers to the devices
//! that are connected (the others find them in their next welcome).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Control;

impl Control {
    /// Runs the campaign engine until `stop` turns true: every tick, or sooner after a device's
    /// firmware report, it advances the running campaigns and pushes their offers to the
    /// devices that are connected (the others find them in their next welcome).
    pub async fn run_campaigns(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let tick = Duration::from_secs_f64(crate::service::TICK);
        loop {
            // The engine runs on one replica: the leader.
            if self.is_leader() {
                match self.service.campaign_tick().await {
                    Ok(pushes) => {
                        for (device, command) in pushes {
                            let this = self.clone();
                            tokio::spawn(async move { this.deliver(&device, &command).await });
                        }
                    }
                    Err(e) => tracing::error!("campaign engine: {e}"),
                }
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
                () = self.service.firmware_changed() => {}
            }
        }
    }
}
