//! Live operational sessions, by device, so the server can push commands: over QUIC, or over
//! a pull link whose device takes its commands from the server (the HTTPS fallback for
//! networks that block UDP, by long polling; CoAP, by observing).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use protocol::message::{self, Command, CommandReply, MAX_RESPONSE, Request};

use crate::core::{DeviceId, DevicePeer};
use crate::service::{Handled, Service};

/// Time allowed for a device to answer a command (over HTTPS, from the push: a device asks
/// for commands again at once after each answer).
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

/// How long an HTTPS session counts as live after the device last asked for commands (it asks
/// again at most [`POLL_WAIT`] after its last answer).
const PULL_LIVENESS: Duration = Duration::from_secs(60);
/// How long a device's request for commands waits for one before it is answered empty.
pub const POLL_WAIT: Duration = Duration::from_secs(25);

/// A device's operational session: a QUIC connection (commands on server-opened streams) or
/// the HTTPS fallback (commands handed out when the device asks, replies posted back).
#[derive(Debug, Clone)]
enum Link {
    Quic(quinn::Connection),
    Pull(Arc<PullLink>),
}

/// A command waiting for its reply.
type Pending = (Command, oneshot::Sender<CommandReply>);

/// A session whose device takes its commands (HTTPS long polling, a CoAP observation):
/// commands queued for the device's next request for them, and the one it was last handed,
/// waiting for its reply.
#[derive(Debug)]
pub struct PullLink {
    queue: mpsc::Sender<Pending>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Pending>>,
    awaiting: Mutex<Option<oneshot::Sender<CommandReply>>>,
    last_seen: Mutex<Instant>,
    /// The exporter value of the secure session that opened it.
    binding: [u8; protocol::EXPORTER_LEN],
}

impl Link {
    /// Whether two links are the same session.
    fn same(&self, other: &Link) -> bool {
        match (self, other) {
            (Link::Quic(a), Link::Quic(b)) => a.stable_id() == b.stable_id(),
            (Link::Pull(a), Link::Pull(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl PullLink {
    fn new(binding: [u8; protocol::EXPORTER_LEN]) -> PullLink {
        let (queue, incoming) = mpsc::channel(16);
        PullLink {
            queue,
            incoming: tokio::sync::Mutex::new(incoming),
            awaiting: Mutex::new(None),
            last_seen: Mutex::new(Instant::now()),
            binding,
        }
    }

    fn live(&self) -> bool {
        lock(&self.last_seen).elapsed() < PULL_LIVENESS
    }

    /// The next command for the device, waiting up to `wait`; `None` if none came.
    pub async fn next(&self, wait: Duration) -> Option<Command> {
        *lock(&self.last_seen) = Instant::now();
        let mut incoming = self.incoming.lock().await;
        let (command, reply) = tokio::time::timeout(wait, incoming.recv()).await.ok()??;
        *lock(&self.awaiting) = Some(reply);
        *lock(&self.last_seen) = Instant::now();
        Some(command)
    }

    /// The device's reply to the command it was last handed; `false` if none was waiting.
    pub fn reply(&self, reply: CommandReply) -> bool {
        *lock(&self.last_seen) = Instant::now();
        match lock(&self.awaiting).take() {
            Some(waiting) => waiting.send(reply).is_ok(),
            None => false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The secure session a request came on, as a device's operational session would be.
pub enum Carrier {
    /// A QUIC connection: commands go on streams the server opens.
    Quic(quinn::Connection),
    /// An HTTPS or CoAP secure session: commands wait in a pull link.
    Pull,
}

/// Registry of operational sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    live: Mutex<HashMap<DeviceId, Link>>,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Link>> {
        lock(&self.live)
    }

    /// Makes a session on `carrier` (TLS exporter value `binding`) the one of `device`,
    /// unless it already is: the link put in and the one it displaced, which stays open until
    /// the hello is decided.
    fn open(
        &self,
        device: &DeviceId,
        carrier: Carrier,
        binding: &[u8; protocol::EXPORTER_LEN],
    ) -> Option<(Link, Option<Link>)> {
        let mut map = self.map();
        let current = map.get(device);
        let link = match carrier {
            Carrier::Quic(conn) => {
                if matches!(current, Some(Link::Quic(c)) if c.stable_id() == conn.stable_id()) {
                    return None;
                }
                Link::Quic(conn)
            }
            Carrier::Pull => {
                // Another hello on the same secure session (after new owner roots) keeps its
                // link: the commands it handed out are answered there.
                if matches!(current, Some(Link::Pull(l)) if l.binding == *binding && l.live()) {
                    return None;
                }
                Link::Pull(Arc::new(PullLink::new(*binding)))
            }
        };
        let displaced = map.insert(device.clone(), link.clone());
        Some((link, displaced))
    }

    /// Ends what a session opened by a welcome displaced. A device holds one operational
    /// connection: an older one (left behind when its network changed, or opened with a copy
    /// of its credentials) is closed, so that idle connections cannot pile up under one
    /// identity.
    fn retire(displaced: Option<Link>) {
        if let Some(Link::Quic(old)) = displaced {
            old.close(
                super::close::REPLACED.into(),
                b"replaced by a newer session of this device",
            );
        }
    }

    /// Puts back the session `ours` displaced when its hello was refused, if `ours` is still
    /// the device's.
    fn reopen(&self, device: &DeviceId, ours: &Link, displaced: Option<Link>) {
        let mut map = self.map();
        if map.get(device).is_some_and(|l| l.same(ours)) {
            match displaced {
                Some(link) => map.insert(device.clone(), link),
                None => map.remove(device),
            };
        }
    }

    /// The live pull session (HTTPS or CoAP) of `device`, if it has one.
    pub fn pull(&self, device: &DeviceId) -> Option<Arc<PullLink>> {
        match self.map().get(device) {
            Some(Link::Pull(link)) if link.live() => Some(link.clone()),
            _ => None,
        }
    }

    /// Has `service` answer `request`, which came on `carrier` (whose TLS exporter value is
    /// `binding`). A request that may open the device's session makes it the device's session
    /// first, and puts back the one it displaced if the answer did not open it (see
    /// [`crate::core::onboard::may_open_session`] for why first).
    pub async fn handle(
        &self,
        service: &Service,
        peer: &DevicePeer,
        binding: &[u8; protocol::EXPORTER_LEN],
        carrier: Carrier,
        request: Request,
        transport: &'static str,
    ) -> Handled {
        let opening = if crate::core::onboard::may_open_session(peer, &request) {
            self.open(&peer.id, carrier, binding)
        } else {
            None
        };
        let handled = service.handle(peer, binding, request, transport).await;
        if let Some((ours, displaced)) = opening {
            if handled.opened_session {
                Self::retire(displaced);
            } else {
                self.reopen(&peer.id, &ours, displaced);
            }
        }
        handled
    }

    /// Forgets the QUIC session of `device` if it is still connection `id`.
    pub fn unregister(&self, device: &DeviceId, id: usize) {
        let mut map = self.map();
        if matches!(map.get(device), Some(Link::Quic(c)) if c.stable_id() == id) {
            map.remove(device);
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        let mut map = self.map();
        map.retain(|_, link| !matches!(link, Link::Pull(l) if !l.live()));
        map.len()
    }

    /// Whether there is no live session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `device` has a live session.
    pub fn is_connected(&self, device: &DeviceId) -> bool {
        match self.map().get(device) {
            Some(Link::Quic(_)) => true,
            Some(Link::Pull(link)) => link.live(),
            None => false,
        }
    }

    /// Ends the session of `device`, if any.
    pub fn close(&self, device: &DeviceId, reason: &str) {
        if let Some(Link::Quic(conn)) = self.map().remove(device) {
            conn.close(super::close::REVOKED.into(), reason.as_bytes());
        }
    }

    /// Sends `command` to `device` and waits for its reply.
    pub async fn push(
        &self,
        device: &DeviceId,
        command: &Command,
    ) -> Result<CommandReply, PushError> {
        let link = self
            .map()
            .get(device)
            .cloned()
            .ok_or_else(|| PushError::NotConnected(device.clone()))?;
        let session = |e: &dyn std::fmt::Display| PushError::Session(device.clone(), e.to_string());
        let exchange = async {
            match link {
                Link::Quic(conn) => {
                    let (send, mut recv) = conn.open_bi().await.map_err(|e| session(&e))?;
                    super::send_frame(send, &message::encode(command))
                        .await
                        .map_err(|e| session(&e))?;
                    let bytes =
                        protocol::frame_io::read_frame(&mut recv, MAX_RESPONSE, None, |_| {
                            Ok::<(), std::convert::Infallible>(())
                        })
                        .await
                        .map_err(|e| session(&e))?;
                    message::decode::<CommandReply>(&bytes, MAX_RESPONSE)
                        .map_err(|e| PushError::BadReply(device.clone(), e.to_string()))
                }
                Link::Pull(link) => {
                    if !link.live() {
                        return Err(PushError::NotConnected(device.clone()));
                    }
                    let (reply, replied) = oneshot::channel();
                    link.queue
                        .send((command.clone(), reply))
                        .await
                        .map_err(|e| session(&e))?;
                    replied.await.map_err(|e| session(&e))
                }
            }
        };
        tokio::time::timeout(COMMAND_DEADLINE, exchange)
            .await
            .map_err(|_| PushError::Timeout(device.clone()))?
    }
}
