//! The CoAPS listener for constrained devices (RFC 9148's EST-coaps, constrained BRSKI): CoAP
//! over DTLS 1.2 on one UDP socket (default port 5684).
//!
//! - `cookie`: the stateless cookie exchange that comes before any per-peer state;
//! - `dtls`: the security layer (OpenSSL's DTLS, X.509 both ways, the common trust store);
//! - `message`: CoAP messaging over a session (deduplication, blocks, bad options);
//! - `resources`: what each resource asks of the service.
//!
//! One task reads the socket and routes each datagram by its source address: to the peer's
//! session, or to the cookie front. Requests are answered on tasks of their own, so a slow
//! one (a MASA call) does not hold the others. Sessions are bounded in number (and, for one
//! address, in handshakes at once) and evicted after [`IDLE`] without a datagram. The security
//! layer is behind [`SecureSession`], so that OSCORE + EDHOC can take its place later without
//! touching messaging or resources.

pub mod cookie;
#[allow(unsafe_code)]
pub mod dtls;
pub mod message;
pub mod resources;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::watch;

use self::cookie::Cookies;
use self::dtls::{Dtls, DtlsError, PeerIdentity};
use self::message::{Incoming, Messages};
use crate::service::Service;
use crate::transport::limits::Limits;
use crate::transport::sessions::{self, Sessions};
use crate::transport::tls::RegistrarIdentity;

/// A session without a datagram for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(120);
/// How often the handshakes in progress are looked at (their flights retransmitted if due).
const TICK: Duration = Duration::from_millis(500);
/// Every how many ticks every session is looked at for idleness: an idle one goes within
/// `IDLE` plus 5 s, and an idle fleet does not cost a visit per session twice a second.
const SWEEP_TICKS: u32 = 10;
/// Sessions at once.
const MAX_SESSIONS: usize = 20_000;

/// The security layer under CoAP: what a DTLS session does, and what OSCORE would.
pub trait SecureSession: Send {
    /// Takes a datagram; returns the messages it carried and whether the session opened.
    fn receive(&mut self, datagram: &[u8]) -> Result<dtls::Progress, DtlsError>;
    /// Protects a message for the peer.
    fn send(&mut self, message: &[u8]) -> Result<(), DtlsError>;
    /// The datagrams to send now.
    fn outgoing(&mut self) -> Vec<Vec<u8>>;
    /// Who the peer is, once authenticated.
    fn peer(&self) -> Option<&PeerIdentity>;
    /// Called on every tick (handshake retransmission).
    fn on_tick(&mut self);
    /// Ends the session (what tells the peer is in [`SecureSession::outgoing`]).
    fn close(&mut self);
}

impl SecureSession for dtls::Session {
    fn receive(&mut self, datagram: &[u8]) -> Result<dtls::Progress, DtlsError> {
        dtls::Session::receive(self, datagram)
    }
    fn send(&mut self, message: &[u8]) -> Result<(), DtlsError> {
        dtls::Session::send(self, message)
    }
    fn outgoing(&mut self) -> Vec<Vec<u8>> {
        dtls::Session::outgoing(self)
    }
    fn peer(&self) -> Option<&PeerIdentity> {
        dtls::Session::peer(self)
    }
    fn on_tick(&mut self) {
        dtls::Session::on_tick(self)
    }
    fn close(&mut self) {
        dtls::Session::close(self)
    }
}

/// One peer: its secure session and its message layer.
struct Peer {
    secure: Box<dyn SecureSession>,
    messages: Messages,
    last_seen: Instant,
    /// The token of the peer's observation of its commands (a new observation replaces the
    /// one before), and whether a task is sending its notifications.
    observation: Option<Vec<u8>>,
    notifying: bool,
    /// The client random of the ClientHello that began the session.
    began_with: Vec<u8>,
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct CoapStats {
    /// HelloVerifyRequests sent (no state kept).
    pub cookies_sent: std::sync::atomic::AtomicU64,
    /// Sessions begun (a good cookie).
    pub sessions_begun: std::sync::atomic::AtomicU64,
    /// Handshakes that failed (refused certificates among them).
    pub handshakes_failed: std::sync::atomic::AtomicU64,
    /// Datagrams dropped (not a ClientHello from an unknown peer, limits).
    pub dropped: std::sync::atomic::AtomicU64,
}

/// The listener's shared state.
pub struct Listener {
    socket: Arc<UdpSocket>,
    cookies: Cookies,
    /// The registrar's identity (renewed and rolled over while the server runs), and the DTLS
    /// server built for its version in force.
    identity: Arc<RegistrarIdentity>,
    dtls: Mutex<Arc<Dtls>>,
    service: Arc<Service>,
    sessions: Arc<Sessions>,
    peers: Mutex<HashMap<SocketAddr, Arc<Mutex<Peer>>>>,
    /// The peers whose handshake is in progress: the only ones a tick must visit, and the only
    /// ones [`Listener::admit`] counts. A hint kept beside `peers`: an entry whose session
    /// opened or went is taken out at the latest by the next tick.
    handshaking: Mutex<HashSet<SocketAddr>>,
    /// Handshakes at once from one IP address (devices behind a NAT share one): a sixteenth
    /// of the connections one address may hold (64 by default).
    handshakes_per_address: usize,
    /// What it did.
    pub stats: CoapStats,
}

fn count(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl Listener {
    /// A listener on `socket` presenting `identity` and serving `service` within `limits`.
    pub fn new(
        socket: UdpSocket,
        identity: Arc<RegistrarIdentity>,
        service: Arc<Service>,
        sessions: Arc<Sessions>,
        limits: &Limits,
    ) -> Result<Arc<Self>, DtlsError> {
        let dtls = Dtls::new(&identity.pair(), service.trust(), service.clock())?;
        Ok(Arc::new(Listener {
            socket: Arc::new(socket),
            cookies: Cookies::new().map_err(|_| DtlsError::Setup("no randomness".into()))?,
            identity,
            dtls: Mutex::new(Arc::new(dtls)),
            service,
            sessions,
            peers: Mutex::new(HashMap::new()),
            handshaking: Mutex::new(HashSet::new()),
            handshakes_per_address: (limits.max_connections_per_address / 16).max(1),
            stats: CoapStats::default(),
        }))
    }

    /// Its address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Sessions now (handshaking or open).
    pub fn sessions(&self) -> usize {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Serves until `stop` says so.
    pub async fn serve(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut buf = vec![0u8; 65_536];
        let mut tick = tokio::time::interval(TICK);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    self.on_tick(ticks.is_multiple_of(SWEEP_TICKS)).await;
                }
                received = self.socket.recv_from(&mut buf) => {
                    match received {
                        // In the order they came: a peer's handshake flights and blocks
                        // are taken in sequence.
                        Ok((n, from)) => self.clone().on_datagram(from, &buf[..n]).await,
                        Err(e) => tracing::debug!("CoAP socket: {e}"),
                    }
                }
            }
        }
    }

    fn peer(&self, from: SocketAddr) -> Option<Arc<Mutex<Peer>>> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&from)
            .cloned()
    }

    fn drop_peer(&self, from: SocketAddr) {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&from);
        self.handshook(from);
    }

    /// `from` no longer has a handshake in progress (its session opened, or went).
    fn handshook(&self, from: SocketAddr) {
        self.handshaking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&from);
    }

    async fn send_all(&self, to: SocketAddr, datagrams: Vec<Vec<u8>>) {
        for d in datagrams {
            if let Err(e) = self.socket.send_to(&d, to).await {
                tracing::debug!(%to, "CoAP send: {e}");
            }
        }
    }

    async fn on_datagram(self: Arc<Self>, from: SocketAddr, datagram: &[u8]) {
        let Some(peer) = self.peer(from) else {
            return self.on_stranger(from, datagram).await;
        };
        // A new handshake from the address of a session (the device restarted on the same
        // port, RFC 6347 4.2.8, or gave up a handshake and began another): treated as a
        // stranger's, so it gets a cookie and, once it returns it, a session that replaces
        // the old one; until then the old one stands. A hello of the session's own handshake
        // (the same client random), retransmitted or late, stays with it: begun again, it
        // would replace a session the client may already be using.
        if let Some(hello) = cookie::client_hello(datagram) {
            let began_with = peer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .began_with
                .clone();
            if began_with != hello.random() {
                return self.on_stranger(from, datagram).await;
            }
        }
        let (outgoing, requests, failed) = {
            let mut p = peer.lock().unwrap_or_else(|e| e.into_inner());
            p.last_seen = Instant::now();
            match p.secure.receive(datagram) {
                Ok(progress) => {
                    if progress.opened {
                        self.handshook(from);
                    }
                    let mut replies = Vec::new();
                    let mut requests = Vec::new();
                    for message in progress.received {
                        match p.messages.incoming(&message) {
                            Incoming::Nothing => {}
                            Incoming::Reply(r) => replies.push(r),
                            Incoming::Refused(r, code) => {
                                self.service.metrics().refused(resources::error_code(code));
                                replies.push(r);
                            }
                            Incoming::Request(request, key) => requests.push((request, key)),
                        }
                    }
                    for r in replies {
                        let _ = p.secure.send(&r);
                    }
                    (p.secure.outgoing(), requests, None)
                }
                Err(e) => (p.secure.outgoing(), Vec::new(), Some(e)),
            }
        };
        // A refused handshake is counted before its alert goes out, so whoever reads the
        // counters after the client saw the alert sees the refusal.
        if let Some(DtlsError::Handshake(_)) = &failed {
            count(&self.stats.handshakes_failed);
            self.service.metrics().handshake_refused();
        }
        self.send_all(from, outgoing).await;
        if let Some(e) = failed {
            tracing::debug!(%from, "CoAP session ended: {e}");
            self.drop_peer(from);
            return;
        }
        for (request, key) in requests {
            let (this, peer) = (self.clone(), peer.clone());
            tokio::spawn(async move {
                let identity = {
                    let p = peer.lock().unwrap_or_else(|e| e.into_inner());
                    p.secure.peer().cloned()
                };
                let Some(identity) = identity else { return };
                if request.method == coap_lite::RequestType::Get
                    && request.path == protocol::coap::COMMANDS
                    && request.observe == Some(0)
                {
                    return this.observe(from, peer, &identity, &key).await;
                }
                let answer =
                    resources::answer(&this.service, &this.sessions, &identity, request).await;
                if answer.refused_here {
                    this.service
                        .metrics()
                        .refused(resources::error_code(answer.code));
                }
                let outgoing = {
                    let mut p = peer.lock().unwrap_or_else(|e| e.into_inner());
                    let bytes = p.messages.answer(&key, &answer);
                    if let Err(e) = p.secure.send(&bytes) {
                        tracing::debug!(%from, "CoAP answer not sent: {e}");
                    }
                    p.secure.outgoing()
                };
                this.send_all(from, outgoing).await;
            });
        }
    }

    /// A device observes its commands (RFC 7641): the observation is acknowledged at once,
    /// then each command pushed to its session is a confirmable notification, retransmitted
    /// until acknowledged (RFC 7252 4.2); a reset or a lost session ends it.
    async fn observe(
        self: Arc<Self>,
        from: SocketAddr,
        peer: Arc<Mutex<Peer>>,
        identity: &PeerIdentity,
        key: &message::Key,
    ) {
        let link = resources::device(&self.service, identity)
            .ok()
            .and_then(|device| self.sessions.pull(&device.id));
        let first = match &link {
            Some(_) => message::Answer::content(
                coap_lite::ResponseType::Content,
                protocol::coap::CBOR,
                Vec::new(),
            ),
            None => message::Answer::error(
                coap_lite::ResponseType::Forbidden,
                "no session: say hello first",
            ),
        };
        let (already, outgoing) = {
            let mut p = peer.lock().unwrap_or_else(|e| e.into_inner());
            let already = p.notifying;
            if link.is_some() {
                p.observation = Some(key.token.clone());
                p.notifying = true;
            }
            let bytes = p.messages.answer_observed(key, &first, 0);
            let _ = p.secure.send(&bytes);
            (already, p.secure.outgoing())
        };
        self.send_all(from, outgoing).await;
        // One task sends a peer's notifications, to its latest observation.
        let Some(link) = link.filter(|_| !already) else {
            return;
        };
        let mut seq = 0u32;
        loop {
            if !self.is_current(from, &peer) {
                return;
            }
            let Some(command) = link.next(sessions::POLL_WAIT).await else {
                continue;
            };
            seq += 1;
            let body = protocol::message::encode(&command);
            let (id, bytes) = {
                let mut p = peer.lock().unwrap_or_else(|e| e.into_inner());
                let token = p.observation.clone().unwrap_or_default();
                p.messages
                    .notification(&token, seq, protocol::coap::CBOR, &body)
            };
            let settled = self.deliver(from, &peer, id, &bytes).await;
            if settled != Some(true) {
                // Reset: the device no longer observes. Unanswered: it is gone, or cannot
                // hear us; its session ends too (a close_notify tells a device that is still
                // there, which connects again), as a QUIC connection would. Either way the
                // order stays in the device's record for its next hello.
                let outgoing = {
                    let mut p = peer.lock().unwrap_or_else(|e| e.into_inner());
                    p.observation = None;
                    p.notifying = false;
                    if settled.is_none() {
                        p.secure.close();
                    }
                    p.secure.outgoing()
                };
                self.send_all(from, outgoing).await;
                if settled.is_none() && self.is_current(from, &peer) {
                    self.drop_peer(from);
                }
                return;
            }
        }
    }

    /// Sends a confirmable message until the peer settles it (RFC 7252 4.2: from 2 s,
    /// doubling, four retransmissions): acknowledged (`true`), reset (`false`), or neither.
    async fn deliver(
        &self,
        to: SocketAddr,
        peer: &Arc<Mutex<Peer>>,
        id: u16,
        bytes: &[u8],
    ) -> Option<bool> {
        let mut wait = Duration::from_secs(2);
        for _ in 0..5 {
            let outgoing = {
                let mut p = peer.lock().unwrap_or_else(|e| e.into_inner());
                let _ = p.secure.send(bytes);
                p.secure.outgoing()
            };
            self.send_all(to, outgoing).await;
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let settled = peer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .messages
                    .settled(id);
                if settled.is_some() {
                    return settled;
                }
            }
            wait *= 2;
        }
        None
    }

    /// Whether `peer` is still the session of `from`.
    fn is_current(&self, from: SocketAddr, peer: &Arc<Mutex<Peer>>) -> bool {
        self.peer(from).is_some_and(|p| Arc::ptr_eq(&p, peer))
    }

    /// The DTLS server for the identity in force (rebuilt after a renewal or a rollover;
    /// sessions begun before keep theirs).
    fn dtls(&self) -> Result<Arc<Dtls>, DtlsError> {
        let pair = self.identity.pair();
        let mut current = self.dtls.lock().unwrap_or_else(|e| e.into_inner());
        if current.version != pair.version {
            *current = Arc::new(Dtls::new(
                &pair,
                self.service.trust(),
                self.service.clock(),
            )?);
        }
        Ok(current.clone())
    }

    /// A datagram from an address without a session: only a ClientHello is looked at, and
    /// only one that returns our cookie makes a session (nothing is kept before).
    async fn on_stranger(&self, from: SocketAddr, datagram: &[u8]) {
        let Some(hello) = cookie::client_hello(datagram) else {
            count(&self.stats.dropped);
            return;
        };
        if !self.cookies.valid(from, &hello) {
            count(&self.stats.cookies_sent);
            let hvr = self.cookies.hello_verify_request(from, &hello);
            self.send_all(from, vec![hvr]).await;
            return;
        }
        match self.dtls().and_then(|dtls| dtls.begin(datagram)) {
            Ok(None) => count(&self.stats.dropped),
            Ok(Some(mut session)) => {
                if !self.admit(from.ip()) {
                    count(&self.stats.dropped);
                    return;
                }
                count(&self.stats.sessions_begun);
                let outgoing = session.outgoing();
                self.handshaking
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(from);
                self.peers.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    from,
                    Arc::new(Mutex::new(Peer {
                        secure: Box::new(session),
                        messages: Messages::default(),
                        observation: None,
                        notifying: false,
                        began_with: hello.random().to_vec(),
                        last_seen: Instant::now(),
                    })),
                );
                self.send_all(from, outgoing).await;
            }
            Err(e) => {
                count(&self.stats.handshakes_failed);
                self.service.metrics().handshake_refused();
                tracing::debug!(%from, "DTLS: {e}");
            }
        }
    }

    /// Whether another session may begin for `ip`.
    fn admit(&self, ip: IpAddr) -> bool {
        if self.sessions() >= MAX_SESSIONS {
            return false;
        }
        let handshaking = self
            .handshaking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|addr| addr.ip() == ip)
            .count();
        handshaking < self.handshakes_per_address
    }

    /// Retransmits the handshake flights that are due; on a `sweep`, also drops the sessions
    /// idle for [`IDLE`].
    async fn on_tick(&self, sweep: bool) {
        let due: Vec<SocketAddr> = if sweep {
            self.peers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .copied()
                .collect()
        } else {
            self.handshaking
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied()
                .collect()
        };
        for addr in due {
            let Some(peer) = self.peer(addr) else {
                self.handshook(addr);
                continue;
            };
            let (idle, outgoing) = {
                let mut p = peer.lock().unwrap_or_else(|e| e.into_inner());
                if p.secure.peer().is_some() {
                    self.handshook(addr);
                }
                p.secure.on_tick();
                (p.last_seen.elapsed() >= IDLE, p.secure.outgoing())
            };
            if idle {
                self.drop_peer(addr);
                continue;
            }
            self.send_all(addr, outgoing).await;
        }
    }
}

/// Binds `addr` for CoAPS, presenting `identity`.
pub async fn bind(
    addr: SocketAddr,
    identity: Arc<RegistrarIdentity>,
    service: Arc<Service>,
    sessions: Arc<Sessions>,
    limits: &Limits,
) -> std::io::Result<Arc<Listener>> {
    // Large buffers, as QUIC's: a fleet's handshakes and notifications come in bursts.
    let socket = crate::transport::quic::udp_socket(addr)?;
    socket.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(socket)?;
    Listener::new(socket, identity, service, sessions, limits)
        .map_err(|e| std::io::Error::other(e.to_string()))
}
