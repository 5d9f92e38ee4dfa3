//! Live operational sessions, by device, so the server can push commands.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use protocol::message::{self, Command, CommandReply, MAX_RESPONSE};

use crate::core::DeviceId;

/// Time allowed for a device to answer a command.
const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

/// Why a command could not be delivered.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The device has no live session.
    #[error("device {0} is not connected")]
    NotConnected(DeviceId),
    /// The session failed while the command was in flight.
    #[error("session with {0} failed: {1}")]
    Session(DeviceId, String),
    /// The device's reply could not be decoded.
    #[error("bad reply from {0}: {1}")]
    BadReply(DeviceId, String),
    /// The device did not answer in time.
    #[error("device {0} did not answer in time")]
    Timeout(DeviceId),
}

/// Registry of operational sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    live: Mutex<HashMap<DeviceId, quinn::Connection>>,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, quinn::Connection>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `conn` as the session of `device` (replacing an older one).
    pub fn register(&self, device: &DeviceId, conn: quinn::Connection) {
        self.map().insert(device.clone(), conn);
    }

    /// Forgets the session of `device` if it is still connection `id`.
    pub fn unregister(&self, device: &DeviceId, id: usize) {
        let mut map = self.map();
        if map.get(device).is_some_and(|c| c.stable_id() == id) {
            map.remove(device);
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether there is no live session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `device` has a live session.
    pub fn is_connected(&self, device: &DeviceId) -> bool {
        self.map().contains_key(device)
    }

    /// Ends the session of `device`, if any.
    pub fn close(&self, device: &DeviceId, reason: &str) {
        if let Some(conn) = self.map().remove(device) {
            conn.close(super::close::REVOKED.into(), reason.as_bytes());
        }
    }

    /// Sends `command` to `device` and waits for its reply.
    pub async fn push(
        &self,
        device: &DeviceId,
        command: &Command,
    ) -> Result<CommandReply, PushError> {
        let conn = self
            .map()
            .get(device)
            .cloned()
            .ok_or_else(|| PushError::NotConnected(device.clone()))?;
        let session = |e: &dyn std::fmt::Display| PushError::Session(device.clone(), e.to_string());
        let exchange = async {
            let (send, mut recv) = conn.open_bi().await.map_err(|e| session(&e))?;
            super::send_frame(send, &message::encode(command))
                .await
                .map_err(|e| session(&e))?;
            let bytes = protocol::frame_io::read_frame(&mut recv, MAX_RESPONSE, None, |_| {
                Ok::<(), std::convert::Infallible>(())
            })
            .await
            .map_err(|e| session(&e))?;
            message::decode::<CommandReply>(&bytes, MAX_RESPONSE)
                .map_err(|e| PushError::BadReply(device.clone(), e.to_string()))
        };
        tokio::time::timeout(COMMAND_DEADLINE, exchange)
            .await
            .map_err(|_| PushError::Timeout(device.clone()))?
    }
}
