//! Live operational sessions, by device serial, so the server can push commands.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use protocol::message::{self, Command, CommandReply, MAX_RESPONSE};

use super::quic::{read_frame, write_frame};

/// Time allowed for a device to answer a command.
const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

/// Why a command could not be delivered.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The device has no live session.
    #[error("device {0} is not connected")]
    NotConnected(String),
    /// The session failed while the command was in flight.
    #[error("session with {0} failed: {1}")]
    Session(String, String),
    /// The device's reply could not be decoded.
    #[error("bad reply from {0}: {1}")]
    BadReply(String, String),
    /// The device did not answer in time.
    #[error("device {0} did not answer in time")]
    Timeout(String),
}

/// Registry of operational sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, quinn::Connection>>,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, quinn::Connection>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `conn` as the session of `serial` (replacing an older one).
    pub fn register(&self, serial: &str, conn: quinn::Connection) {
        self.map().insert(serial.to_string(), conn);
    }

    /// Forgets the session of `serial` if it is still connection `id`.
    pub fn unregister(&self, serial: &str, id: usize) {
        let mut map = self.map();
        if map.get(serial).is_some_and(|c| c.stable_id() == id) {
            map.remove(serial);
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

    /// Whether `serial` has a live session.
    pub fn is_connected(&self, serial: &str) -> bool {
        self.map().contains_key(serial)
    }

    /// Ends the session of `serial`, if any.
    pub fn close(&self, serial: &str, reason: &str) {
        if let Some(conn) = self.map().remove(serial) {
            conn.close(super::quic::close::REVOKED.into(), reason.as_bytes());
        }
    }

    /// Sends `command` to `serial` and waits for its reply.
    pub async fn push(&self, serial: &str, command: &Command) -> Result<CommandReply, PushError> {
        let conn = self
            .map()
            .get(serial)
            .cloned()
            .ok_or_else(|| PushError::NotConnected(serial.to_string()))?;
        let session =
            |e: &dyn std::fmt::Display| PushError::Session(serial.to_string(), e.to_string());
        let exchange = async {
            let (send, mut recv) = conn.open_bi().await.map_err(|e| session(&e))?;
            write_frame(send, message::encode(command))
                .await
                .map_err(|e| session(&e))?;
            let bytes = read_frame(&mut recv, MAX_RESPONSE)
                .await
                .map_err(|e| session(&format!("{e:?}")))?;
            message::decode::<CommandReply>(&bytes, MAX_RESPONSE)
                .map_err(|e| PushError::BadReply(serial.to_string(), e.to_string()))
        };
        tokio::time::timeout(COMMAND_DEADLINE, exchange)
            .await
            .map_err(|_| PushError::Timeout(serial.to_string()))?
    }
}
