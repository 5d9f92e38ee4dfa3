//! Pushing commands to the devices that are connected, at most so many at once or so many a
//! second; devices that are not connected get their orders in their next welcome.

use std::sync::Arc;
use std::time::Duration;

use protocol::message::Command;
use tokio::sync::Semaphore;

use super::Control;
use crate::core::DeviceId;

/// Commands in flight at once when no rate is given.
const PUSH_CONCURRENCY: usize = 64;

impl Control {
    /// Pushes `command` to each device of `devices` where its session is (here or on another
    /// replica), at most `rate` per second, and returns those whose session here accepted it.
    pub(super) async fn push_all(
        self: Arc<Self>,
        devices: Vec<DeviceId>,
        command: Command,
        rate: Option<u32>,
    ) -> Vec<DeviceId> {
        let limit = Arc::new(Semaphore::new(PUSH_CONCURRENCY));
        let mut pushes = tokio::task::JoinSet::new();
        // A rate too high to space out (under a microsecond apart) is no limit.
        let mut tick = rate
            .map(|r| Duration::from_secs_f64(1.0 / f64::from(r.max(1))))
            .filter(|period| *period >= Duration::from_micros(1))
            .map(tokio::time::interval);
        for device in devices {
            if let Some(tick) = &mut tick {
                tick.tick().await;
            }
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let (this, command) = (self.clone(), command.clone());
            pushes.spawn(async move {
                let accepted = this.deliver(&device, &command).await;
                drop(permit);
                accepted.then_some(device)
            });
        }
        let mut accepted = Vec::new();
        while let Some(done) = pushes.join_next().await {
            accepted.extend(done.ok().flatten());
        }
        accepted
    }
}
