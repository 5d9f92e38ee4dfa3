//! The campaign engine: steps the running campaigns and pushes their offers to the devices
//! that are connected (the others find them in their next welcome).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Control;

/// The engine's share of a core at most: a tick that took `t` is followed by at least
/// `t * TICK_SPACING` before the next. A tick looks at every device of the running campaigns;
/// at 100,000 devices that took a third of the server's CPU at four ticks a second, and the
/// allocations of decoding the campaign each time slowed the QUIC listener's own until its
/// UDP queues overflowed and sessions expired (perf, 2026-12-04). Small campaigns keep
/// [`crate::service::TICK`]; no campaign waits more than [`MAX_SPACING`] between ticks.
const TICK_SPACING: u32 = 10;
/// The longest wait between ticks, however long the last one took.
const MAX_SPACING: Duration = Duration::from_secs(4);

/// The wait after a tick that took `took`.
fn spacing(tick: Duration, took: Duration) -> Duration {
    tick.max((took * TICK_SPACING).min(MAX_SPACING))
}

impl Control {
    /// Runs the campaign engine until `stop` turns true: every tick, or sooner after a device's
    /// firmware report, it advances the running campaigns and pushes their offers to the
    /// devices that are connected (the others find them in their next welcome).
    pub async fn run_campaigns(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let tick = Duration::from_secs_f64(crate::service::TICK);
        loop {
            // The engine runs on one replica: the leader.
            let started = std::time::Instant::now();
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
            // `tick` (or by what the last one cost) whatever the rate of reports; a report only
            // wakes an idle engine early.
            let spacing = spacing(tick, started.elapsed());
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                () = tokio::time::sleep(spacing) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_spaced_by_their_cost_within_bounds() {
        let tick = Duration::from_millis(250);
        assert_eq!(spacing(tick, Duration::from_millis(2)), tick);
        assert_eq!(
            spacing(tick, Duration::from_millis(90)),
            Duration::from_millis(900)
        );
        assert_eq!(spacing(tick, Duration::from_secs(30)), MAX_SPACING);
    }
}
