//! The native QUIC transport (quinn): one bidirectional stream per request.
//!
//! A connection is authenticated by its TLS client certificate (see [`super::tls`]); the leaf
//! names the device. Each stream carries one length-prefixed request and its response. Frames
//! are read with a size limit, a deadline and a stall timeout, into buffers that grow as bytes
//! arrive and count against the budgets of [`super::limits`]; connections are limited per
//! address and in all, and a connection to at most [`MAX_STREAMS`] streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use protocol::frame::FrameError;
use protocol::frame_io::{self, ReadError};
use protocol::message::{self, MAX_REQUEST, Request, Response};
use quinn::crypto::rustls::QuicServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::sync::OwnedSemaphorePermit;

use super::backlog::SocketBacklog;
use super::limits::{
    Admission, Budgets, ChunkTurns, ConnectionBudget, ConnectionLimits, FrameBudget, Held, Limits,
    OverBudget,
};
use super::sessions::{Carrier, Sessions};
use crate::core::{DevicePeer, LifecycleError};
use crate::service::{Handled, Service};

/// Concurrent request streams per connection.
pub const MAX_STREAMS: u32 = 16;
/// Time allowed to receive one request.
const READ_DEADLINE: Duration = Duration::from_secs(10);
/// Time a frame may go without a byte arriving before it is dropped.
const STALL: Duration = Duration::from_secs(2);
/// A silent connection is closed after this long (agents send keep-alives at least twice as
/// often: `Config::check` holds the heartbeat policy to it).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest UDP payload path MTU discovery probes for. quinn's default stops at 1452 (Ethernet);
/// probing higher is safe (a lost probe only ends the search) and pays off where the path
/// allows it (jumbo frames, loopback): firmware is the only bulk the server sends, and per-packet
/// work bounds it (fleet of 2,000 on loopback: firmware phase 30 s -> 22 s, server CPU per
/// device 10.5 -> 6.4 ms; 64 KiB gave no more).
const MTU_UPPER_BOUND: u16 = 16384;

/// Binds the QUIC listener, with what shows how far behind its reader is (where the system
/// shows it). `reset_key` keys the stateless resets: the same key after a restart lets the new
/// process reset the connections of the old one as soon as a device sends on one, instead of
/// the device waiting out its idle timeout.
pub fn bind(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    reset_key: &[u8],
) -> crate::error::Result<(quinn::Endpoint, Option<SocketBacklog>)> {
    use crate::error::Error;
    let os = |e: std::io::Error| Error::os(format!("binding QUIC on {addr}"), e);
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| Error::Config(format!("QUIC TLS settings: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    let mut transport = quinn::TransportConfig::default();
    // Devices send small requests: bound what one connection may make the server buffer
    // (quinn's defaults are sized for bulk transfers, megabytes per connection).
    transport
        .max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .stream_receive_window((128u32 * 1024).into())
        .receive_window((256u32 * 1024).into())
        .send_window(1024 * 1024)
        .mtu_discovery_config(Some(mtu));
    config.transport_config(Arc::new(transport));
    let runtime = quinn::default_runtime()
        .ok_or_else(|| Error::Config("QUIC needs a Tokio runtime".into()))?;
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
    // Connection ids keyed from the same secret: the restarted process must recognize its
    // predecessor's ids as its own to reset them (quinn drops packets with ids it did not make).
    let cid_key = ring::hmac::sign(&reset_key, b"connection ids");
    let cid_key = u64::from_be_bytes(cid_key.as_ref()[..8].try_into().unwrap_or_default());
    let mut endpoint = quinn::EndpointConfig::new(Arc::new(reset_key));
    endpoint.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    // No interval between resets (quinn's default is 20 ms, and it drops any packet that
    // arrives within it unanswered). quinn takes one clock reading per batch of datagrams, so
    // even a 1 ms interval answered one device per batch: after a restart, devices whose
    // packets came in a batch were dropped, retried on a backed-off timer and came back up to
    // 20 s later (100 devices: slowest 2.5-20 s, now 1.3 s). A reset is always smaller than the
    // packet that caused it (quinn enforces it), so it neither amplifies nor loops (RFC 9000,
    // 10.3.3): an attacker gets back less than they send.
    endpoint.min_reset_interval(Duration::ZERO);
    let socket = udp_socket(addr).map_err(os)?;
    let backlog = SocketBacklog::of(&socket).ok();
    let socket = runtime.wrap_udp_socket(socket).map_err(os)?;
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint,
        Some(config),
        Arc::new(OneDatagramPerSend(socket)),
        runtime,
    )
    .map_err(os)?;
    Ok((endpoint, backlog))
}

/// The listener's socket as quinn sees it, but sending one datagram per call (no GSO). quinn
/// keeps each connection's send buffer at the largest batch it ever sent, which with GSO is up
/// to ten datagrams of up to 16 KiB (`MTU_UPPER_BOUND`) for every connection that once carried
/// firmware; one datagram bounds it to 16 KiB. With datagrams that large, a system call per
/// datagram costs the bulk path little.
#[derive(Debug)]
struct OneDatagramPerSend(Arc<dyn quinn::AsyncUdpSocket>);

impl quinn::AsyncUdpSocket for OneDatagramPerSend {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.0.clone().create_io_poller()
    }
    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.0.try_send(transmit)
    }
    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
    fn max_transmit_segments(&self) -> usize {
        1
    }
    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }
    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

/// Socket buffer asked for; the kernel caps it at `net.core.rmem_max`/`wmem_max`.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// A UDP socket with large buffers: a fleet's handshakes arrive in bursts, and every datagram
/// the kernel drops costs a retransmission timeout.
pub(crate) fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer still works.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Why a connection ended before its device was served (logged at debug level).
#[derive(Debug)]
struct ConnectionEnd(String);

impl std::fmt::Display for ConnectionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What every connection shares.
struct Shared {
    service: Arc<Service>,
    sessions: Arc<Sessions>,
    chunks: ChunkTurns,
    frames: FrameBudget,
}

/// Accepts connections until the endpoint is closed, within `limits`; incomplete requests and
/// firmware chunks are held within `budgets` (shared with the other listeners).
pub async fn serve(
    endpoint: quinn::Endpoint,
    service: Arc<Service>,
    sessions: Arc<Sessions>,
    limits: Limits,
    budgets: Budgets,
) {
    let connections = ConnectionLimits::new(limits);
    let shared = Arc::new(Shared {
        service,
        sessions,
        chunks: budgets.chunks,
        frames: budgets.frames,
    });
    let handshaking = Arc::new(AtomicUsize::new(0));
    while let Some(incoming) = endpoint.accept().await {
        let admission = limits.admission(
            handshaking.load(Ordering::Relaxed),
            incoming.remote_address_validated(),
            incoming.may_retry(),
        );
        match admission {
            Admission::Accept => {}
            Admission::Retry => {
                shared.service.metrics().handshake_retried();
                let _ = incoming.retry();
                continue;
            }
            Admission::Refuse => {
                shared.service.metrics().connection_refused();
                incoming.refuse();
                continue;
            }
        }
        let Some(slot) = connections.admit(incoming.remote_address().ip()) else {
            shared.service.metrics().connection_refused();
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let handshake = Handshake::begin(&handshaking);
        tokio::spawn(async move {
            if let Err(e) = connection(incoming, handshake, &shared).await {
                tracing::debug!("connection ended: {e}");
            }
            drop(slot);
        });
    }
}

/// A handshake in progress, counted until it ends (done, failed or dropped).
struct Handshake(Arc<AtomicUsize>);

impl Handshake {
    fn begin(count: &Arc<AtomicUsize>) -> Handshake {
        count.fetch_add(1, Ordering::Relaxed);
        Handshake(count.clone())
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(
    incoming: quinn::Incoming,
    handshake: Handshake,
    shared: &Arc<Shared>,
) -> Result<(), ConnectionEnd> {
    let service = &shared.service;
    let conn = incoming.await;
    drop(handshake);
    let conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            service.metrics().handshake_refused();
            return Err(ConnectionEnd(e.to_string()));
        }
    };
    let chain: Option<Vec<Vec<u8>>> = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|certs| certs.iter().map(|c| c.to_vec()).collect());
    let peer = match chain.as_deref().map(|chain| service.identify(chain)) {
        Some(Ok(peer)) => peer,
        Some(Err(e)) => {
            service.record_refusal(None, &e).await;
            conn.close(super::close::UNAUTHORIZED.into(), e.to_string().as_bytes());
            return Ok(());
        }
        None => {
            service.metrics().handshake_refused();
            conn.close(super::close::UNAUTHORIZED.into(), b"no client certificate");
            return Ok(());
        }
    };
    let mut binding = [0u8; protocol::EXPORTER_LEN];
    conn.export_keying_material(&mut binding, protocol::EXPORTER_LABEL, b"")
        .map_err(|_| ConnectionEnd("TLS exporter unavailable".into()))?;
    let peer = Arc::new(peer);
    let budget = shared.frames.connection();
    let result = loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => break e,
        };
        let (shared, peer, conn, budget) =
            (shared.clone(), peer.clone(), conn.clone(), budget.clone());
        tokio::spawn(async move {
            let Some((handled, permit)) =
                request(recv, &shared, &peer, conn, &binding, &budget).await
            else {
                return;
            };
            let _ = super::send_frame(send, &message::encode(&handled.response)).await;
            // A chunk's permit is held until the device has it.
            drop(permit);
        });
    };
    shared.sessions.unregister(&peer.id, conn.stable_id());
    tracing::debug!(device = %peer.id, "connection closed: {result}");
    Ok(())
}

/// Reads one request and produces its response, with the permit a firmware chunk holds until
/// it is written; `None` when the stream died or stalled before a request arrived (there is no
/// one to answer).
async fn request(
    mut recv: quinn::RecvStream,
    shared: &Shared,
    peer: &DevicePeer,
    conn: quinn::Connection,
    binding: &[u8; protocol::EXPORTER_LEN],
    budget: &ConnectionBudget,
) -> Option<(Handled, Option<OwnedSemaphorePermit>)> {
    let service = &shared.service;
    let mut held = Held::default();
    let read = frame_io::read_frame(&mut recv, MAX_REQUEST, Some(STALL), |n| {
        budget.take(&mut held, n)
    });
    let bytes = match tokio::time::timeout(READ_DEADLINE, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(ReadError::Frame(e))) => {
            let e = LifecycleError::Decode(frame_to_decode(e));
            return Some((refuse(service, peer, e).await, None));
        }
        Ok(Err(ReadError::Refused(which))) => {
            let e = LifecycleError::Unavailable(match which {
                OverBudget::Connection => "too many incomplete requests on this connection".into(),
                OverBudget::Server => "the server is holding too many incomplete requests".into(),
            });
            return Some((refuse(service, peer, e).await, None));
        }
        // The stream died or stalled, or the request took too long: no one to answer.
        Ok(Err(_)) | Err(_) => return None,
    };
    drop(held);
    match message::decode::<Request>(&bytes, MAX_REQUEST) {
        Ok(request) => {
            let permit = match request {
                Request::FirmwareChunk { .. } => shared.chunks.take().await,
                _ => None,
            };
            let carrier = Carrier::Quic(conn);
            let handled = shared
                .sessions
                .handle(service, peer, binding, carrier, request, "quic")
                .await;
            Some((handled, permit))
        }
        Err(e) => Some((refuse(service, peer, LifecycleError::Decode(e)).await, None)),
    }
}

/// The answer to a request refused before the service saw it (counted and audited there).
async fn refuse(service: &Service, peer: &DevicePeer, e: LifecycleError) -> Handled {
    service.record_refusal(Some(peer), &e).await;
    Handled {
        response: Response::Error(e.to_wire()),
        opened_session: false,
    }
}

fn frame_to_decode(e: FrameError) -> protocol::DecodeError {
    match e {
        FrameError::TooLarge { size, limit } => protocol::DecodeError::TooLarge { size, limit },
        other => protocol::DecodeError::Malformed(other.to_string()),
    }
}
