//! What one peer, and all peers together, can make the transport hold.
//!
//! - Connections: at most `max_connections` in all and `max_connections_per_address` from one
//!   IP address; the rest are refused before the handshake costs anything.
//! - Handshakes: once `handshakes_before_retry` QUIC handshakes are in progress, a new attempt
//!   from an address not yet validated gets a Retry (RFC 9000 8.1): stateless, no crypto, and
//!   a spoofed source never answers it, so a flood of handshakes from forged addresses costs
//!   a packet each, while a real device pays one round trip more. Once `max_handshakes` are in
//!   progress, a new attempt is refused at once, validated or not: in a reconnect storm (a
//!   fleet rebooting together, a server restart) handshakes accepted beyond what the server
//!   completes in time only time out and are paid for again, while a refused device backs off
//!   with jitter and the fleet spreads itself.
//! - Bytes of requests not yet complete: a frame's buffer grows as its bytes arrive (a header
//!   that announces 64 KiB costs nothing until 64 KiB arrive), and those bytes count against a
//!   budget per connection and one for the whole server. A frame that would exceed either is
//!   refused; a frame that stops making progress is dropped after a short stall.
//! - Firmware chunks: at most [`CHUNKS_IN_FLIGHT`] read and handed to a transport at once, over
//!   QUIC and HTTPS together ([`ChunkTurns`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// The limits, as configured (`limits` in onboarder.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Connections at once, handshakes included.
    pub max_connections: usize,
    /// Connections at once from one IP address (devices behind one NAT share it).
    pub max_connections_per_address: usize,
    /// QUIC handshakes in progress from which new attempts must first prove their address.
    pub handshakes_before_retry: usize,
    /// QUIC handshakes in progress from which new attempts are refused.
    pub max_handshakes: usize,
    /// Bytes of incomplete requests held per connection.
    pub frame_bytes_per_connection: usize,
    /// Bytes of incomplete requests held in all.
    pub frame_bytes_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 200_000,
            max_connections_per_address: 1_024,
            handshakes_before_retry: 256,
            max_handshakes: 1_024,
            frame_bytes_per_connection: 2 * protocol::message::MAX_REQUEST,
            frame_bytes_total: 64 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// Limits for a fleet on one machine (the demo, the fleet simulator): every device comes
    /// from the same address.
    pub fn single_host() -> Self {
        let limits = Limits::default();
        Limits {
            max_connections_per_address: limits.max_connections,
            ..limits
        }
    }
}

/// What to do with a QUIC connection attempt, given the handshakes in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go on with the handshake.
    Accept,
    /// Ask the client to prove its address first (a stateless Retry).
    Retry,
    /// Refuse at once; the client tries again later.
    Refuse,
}

impl Limits {
    /// The admission of an attempt while `handshaking` handshakes are in progress; `validated`:
    /// its address is proven (it answered a Retry), `may_retry`: a Retry is still possible.
    pub fn admission(&self, handshaking: usize, validated: bool, may_retry: bool) -> Admission {
        if handshaking >= self.max_handshakes {
            Admission::Refuse
        } else if handshaking >= self.handshakes_before_retry && !validated && may_retry {
            Admission::Retry
        } else {
            Admission::Accept
        }
    }
}

/// Firmware chunks served at once across all connections and transports. Each holds its bytes
/// several times over (file, message, frame, send buffer) until the transport has them, so this
/// bounds what a fleet downloading together makes the server hold and allocate; the others wait
/// their turn.
pub const CHUNKS_IN_FLIGHT: usize = 64;

/// Longest a chunk waits for the QUIC listener's reader to catch up before it takes its turn
/// anyway: a listener kept behind by a flood must slow firmware downloads, not stop them.
pub const MAX_YIELD: Duration = Duration::from_secs(1);

/// The server-wide turns to serve a firmware chunk. A turn covers reading the chunk and handing
/// it to the transport's send buffer (whose own window bounds what waits there), never a
/// client's reading pace: a device that stops reading cannot hold one. While the QUIC
/// listener's reader is behind ([`super::backlog`]), no turn starts (for at most
/// [`MAX_YIELD`]): sessions before bulk.
#[derive(Debug, Clone)]
pub struct ChunkTurns {
    turns: Arc<Semaphore>,
    behind: Option<watch::Receiver<bool>>,
}

impl Default for ChunkTurns {
    fn default() -> Self {
        ChunkTurns {
            turns: Arc::new(Semaphore::new(CHUNKS_IN_FLIGHT)),
            behind: None,
        }
    }
}

impl ChunkTurns {
    /// The same turns, yielding to a reader while `behind` says it is behind.
    pub fn yielding_to(self, behind: watch::Receiver<bool>) -> Self {
        ChunkTurns {
            behind: Some(behind),
            ..self
        }
    }

    /// Waits for a turn; dropping the permit ends it.
    pub async fn take(&self) -> Option<OwnedSemaphorePermit> {
        if let Some(behind) = &self.behind {
            let mut behind = behind.clone();
            // Closed (the watcher gave up) or late: the turn goes ahead.
            let _ = tokio::time::timeout(MAX_YIELD, behind.wait_for(|b| !*b)).await;
        }
        self.turns.clone().acquire_owned().await.ok()
    }

    /// Chunks being served now.
    pub fn in_flight(&self) -> usize {
        CHUNKS_IN_FLIGHT - self.turns.available_permits()
    }
}

/// What the device listeners may hold server-wide, shared by all of them: bytes of incomplete
/// requests and firmware chunks being served.
#[derive(Debug, Clone)]
pub struct Budgets {
    /// Bytes of incomplete requests.
    pub frames: FrameBudget,
    /// Firmware chunks.
    pub chunks: ChunkTurns,
}

impl Budgets {
    /// The budgets `limits` set.
    pub fn new(limits: &Limits) -> Self {
        Budgets {
            frames: FrameBudget::new(limits),
            chunks: ChunkTurns::default(),
        }
    }
}

/// Counts connections in all and per address.
#[derive(Debug)]
pub struct ConnectionLimits {
    limits: Limits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A connection counted by [`ConnectionLimits`]; dropping it uncounts it.
#[derive(Debug)]
pub struct ConnectionSlot {
    owner: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    /// Counters for `limits`.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            limits,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when a limit is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_ip) = &mut *open;
        let from_ip = per_ip.entry(ip).or_insert(0);
        if *total >= self.limits.max_connections
            || *from_ip >= self.limits.max_connections_per_address
        {
            if *from_ip == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        *from_ip += 1;
        *total += 1;
        Some(ConnectionSlot {
            owner: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_ip) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// The server-wide budget of bytes of incomplete requests.
#[derive(Debug, Clone)]
pub struct FrameBudget {
    total: Arc<Semaphore>,
    capacity: usize,
    per_connection: usize,
}

/// One connection's share of the [`FrameBudget`].
#[derive(Debug, Clone)]
pub struct ConnectionBudget {
    total: Arc<Semaphore>,
    connection: Arc<Semaphore>,
}

/// Bytes held for a frame being received; released when dropped.
#[derive(Debug, Default)]
pub struct Held(Vec<OwnedSemaphorePermit>);

/// Which budget a frame ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverBudget {
    /// The connection's.
    Connection,
    /// The server's.
    Server,
}

impl FrameBudget {
    /// A budget of `limits.frame_bytes_total` bytes, `limits.frame_bytes_per_connection` per
    /// connection.
    pub fn new(limits: &Limits) -> Self {
        FrameBudget {
            total: Arc::new(Semaphore::new(limits.frame_bytes_total)),
            capacity: limits.frame_bytes_total,
            per_connection: limits.frame_bytes_per_connection,
        }
    }

    /// A new connection's share.
    pub fn connection(&self) -> ConnectionBudget {
        ConnectionBudget {
            total: self.total.clone(),
            connection: Arc::new(Semaphore::new(self.per_connection)),
        }
    }

    /// Bytes of incomplete requests held now, in all.
    pub fn held(&self) -> usize {
        self.capacity - self.total.available_permits()
    }
}

impl ConnectionBudget {
    /// Takes `n` more bytes for a frame, or says which budget is exhausted (taking nothing).
    pub fn take(&self, held: &mut Held, n: usize) -> Result<(), OverBudget> {
        let n = u32::try_from(n).map_err(|_| OverBudget::Connection)?;
        let conn = self
            .connection
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| OverBudget::Connection)?;
        let total = self
            .total
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| OverBudget::Server)?;
        held.0.push(conn);
        held.0.push(total);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No turn starts while the reader is behind, until it catches up or [`MAX_YIELD`] passes.
    #[tokio::test]
    async fn chunk_turns_wait_while_the_listener_is_behind_but_not_for_ever() {
        let (behind, rx) = watch::channel(true);
        let turns = ChunkTurns::default().yielding_to(rx);
        let waiting = {
            let turns = turns.clone();
            tokio::spawn(async move { turns.take().await.is_some() })
        };
        tokio::time::sleep(MAX_YIELD / 4).await;
        assert!(!waiting.is_finished());
        behind.send(false).unwrap();
        assert!(waiting.await.unwrap());
        // Behind for longer than a chunk may wait: the turn starts after MAX_YIELD.
        behind.send(true).unwrap();
        let started = std::time::Instant::now();
        assert!(turns.take().await.is_some());
        assert!(started.elapsed() >= MAX_YIELD);
        assert_eq!(turns.in_flight(), 0);
    }

    /// Retry for unproven addresses past the first threshold; past the second, a refusal for
    /// everyone, a proven address included.
    #[test]
    fn handshakes_are_retried_then_refused_as_they_pile_up() {
        let limits = Limits {
            handshakes_before_retry: 2,
            max_handshakes: 4,
            ..Limits::default()
        };
        use Admission::{Accept, Refuse, Retry};
        assert_eq!(limits.admission(0, false, true), Accept);
        assert_eq!(limits.admission(2, false, true), Retry);
        assert_eq!(limits.admission(2, true, false), Accept);
        assert_eq!(limits.admission(2, false, false), Accept);
        assert_eq!(limits.admission(4, true, false), Refuse);
        assert_eq!(limits.admission(4, false, true), Refuse);
    }

    #[test]
    fn connections_are_counted_per_address_and_in_all() {
        let limits = ConnectionLimits::new(Limits {
            max_connections: 3,
            max_connections_per_address: 2,
            ..Limits::default()
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_none());
        let _b1 = limits.admit(b).unwrap();
        assert!(limits.admit(b).is_none(), "the total is reached");
        drop(a1);
        let _a3 = limits.admit(a).unwrap();
        assert_eq!(limits.open(), 3);
    }

    #[test]
    fn frame_bytes_are_bounded_per_connection_and_in_all() {
        let budget = FrameBudget::new(&Limits {
            frame_bytes_per_connection: 100,
            frame_bytes_total: 150,
            ..Limits::default()
        });
        let (one, two) = (budget.connection(), budget.connection());
        let mut held = Held::default();
        one.take(&mut held, 60).unwrap();
        assert_eq!(one.take(&mut held, 60), Err(OverBudget::Connection));
        let mut other = Held::default();
        two.take(&mut other, 80).unwrap();
        assert_eq!(two.take(&mut other, 20), Err(OverBudget::Server));
        assert_eq!(budget.held(), 140);
        drop(held);
        drop(other);
        assert_eq!(budget.held(), 0);
    }
}
