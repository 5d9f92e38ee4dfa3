//! Pushing commands to the devices that are connected, at most so many at once or so many a
//! second; devices that are not connected get their orders in their next welcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::message::Command;
use tokio::sync::Semaphore;

use super::Control;
use crate::core::DeviceId;

/// Commands in flight at once (with or without a rate), decommission orders included.
pub(super) const PUSH_CONCURRENCY: usize = 64;
/// Longest a re-keying device holds its push slot (see [`Control::rotation_settled`]).
const ROTATION_SLOT: Duration = Duration::from_secs(10);
/// How often a re-keying device's record is looked at.
const ROTATION_POLL: Duration = Duration::from_millis(20);

impl Control {
    /// Pushes `command` to each device of `devices` where its session is (here or on another
    /// replica), at most `rate` per second, and returns those whose session here accepted it.
    /// A device that accepted a rotation keeps its slot until it is back on its new key.
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
                if accepted && command == Command::Rotate {
                    this.rotation_settled(&device).await;
                }
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

    /// Waits until `device` has confirmed its new key (its rotation is no longer pending), at
    /// most [`ROTATION_SLOT`]. A re-key ends with a new handshake, the dearest thing the server
    /// does: holding the push slot until then makes a fleet-wide rotation flow at the rate the
    /// server takes those handshakes, [`PUSH_CONCURRENCY`] devices at a time, instead of
    /// sending the whole fleet to reconnect at once (100,000 devices on two cores: sockets full
    /// on both sides, most datagrams dropped, sessions down to a few thousand).
    async fn rotation_settled(&self, device: &DeviceId) {
        let deadline = Instant::now() + ROTATION_SLOT;
        while Instant::now() < deadline {
            let pending = self.service.device(device).is_ok_and(|r| {
                r.rotation
                    .is_some_and(|r| r.state == crate::core::record::RotationState::Pending)
            });
            if !pending {
                return;
            }
            tokio::time::sleep(ROTATION_POLL).await;
        }
    }
}
