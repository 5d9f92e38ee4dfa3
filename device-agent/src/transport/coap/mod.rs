//! The agent over CoAP (RFC 7252) secured by DTLS 1.2 (RFC 9148's profile), for constrained
//! devices and networks: the same requests, answers and commands as over QUIC, carried by
//! the onboarder's CoAP resources.
//!
//! - our requests go to `/.well-known/onboarder/request` (CBOR), except a firmware chunk, read
//!   by Block2 from the image's own resource (any block first, so a download resumes), and the
//!   wipe attestation, posted as COSE_Sign1 (by Block1);
//! - commands are notifications of an observation of `/.well-known/onboarder/commands`
//!   (RFC 7641), answered on `/.well-known/onboarder/reply`.
//!
//! Messages are confirmable and retransmitted from `ack_timeout`, doubling (RFC 7252 4.2),
//! until the session's idle timeout; one request is outstanding at a time (NSTART = 1, 4.7);
//! bodies larger than a block move in blocks both ways (RFC 7959): [`UPLOAD_BLOCK`] up, the
//! server's block size down. A session that hears
//! nothing for a keep-alive interval pings (an empty confirmable message); one whose
//! messages go unanswered for the idle timeout is lost, as a QUIC connection would be.

pub mod dtls;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use openssl::ssl::{ErrorCode as SslErrorCode, SslContext, SslStream};
use protocol::DecodeError;
use protocol::coap::{self as wire, BLOCK, Pipe};
use protocol::message::{self, Command, CommandReply, ErrorCode, Request, Response, WireError};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::error::AgentError;

/// Timing of a CoAP session.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a handshake may take.
    pub connect: Duration,
    /// First retransmission timeout of a confirmable message (RFC 7252's ACK_TIMEOUT, 2 s; it
    /// may be set lower on fast, lossy links).
    pub ack_timeout: Duration,
    /// A message unanswered this long loses the session.
    pub give_up: Duration,
    /// Silence after which the session pings.
    pub keep_alive: Duration,
}

/// Size of the blocks a body is sent in (Block1): half the largest, as a device with a small
/// send buffer would use (the server takes any size).
pub const UPLOAD_BLOCK: usize = BLOCK / 2;

/// Notifications remembered for deduplication (a lost acknowledgement makes the server send
/// one again).
const REMEMBERED: usize = 32;

/// What a message waits for: the response with its token, or the acknowledgement or reset of
/// its message id (a ping).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Awaited {
    Token(Vec<u8>),
    Id(u16),
}

/// A response: code, content format, body (whole, once blocks are joined).
#[derive(Debug)]
struct Answer {
    code: ResponseType,
    format: Option<u16>,
    body: Vec<u8>,
}

impl Answer {
    /// The server's refusal as our wire error (the CoAP code says what the core's code said;
    /// the diagnostic text says why).
    fn refusal(&self) -> Response {
        let code = match self.code {
            ResponseType::Unauthorized => ErrorCode::Unauthorized,
            ResponseType::Forbidden => ErrorCode::WrongState,
            ResponseType::NotFound => ErrorCode::UnknownDevice,
            ResponseType::RequestEntityTooLarge => ErrorCode::TooLarge,
            ResponseType::ServiceUnavailable => ErrorCode::Unavailable,
            ResponseType::NotImplemented => ErrorCode::Unsupported,
            _ => ErrorCode::BadRequest,
        };
        Response::Error(WireError {
            code,
            message: format!(
                "{:?}: {}",
                self.code,
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            ),
        })
    }
}

/// The state the reader task shares with the session.
struct Shared {
    socket: UdpSocket,
    tls: Mutex<SslStream<Pipe>>,
    awaited: Mutex<HashMap<Awaited, oneshot::Sender<Packet>>>,
    next_id: AtomicU16,
    rng: SystemRandom,
    timing: Timing,
    heard: Mutex<Instant>,
    /// The token of our observation of the commands, once registered.
    observation: Mutex<Option<Vec<u8>>>,
    notifications: Mutex<VecDeque<u16>>,
    /// Why the session ended, once it has.
    ended: watch::Sender<Option<String>>,
}

/// A session with the onboarder's CoAPS listener.
pub struct CoapSession {
    shared: Arc<Shared>,
    /// NSTART = 1: one request outstanding at a time.
    turn: tokio::sync::Mutex<()>,
    commands: tokio::sync::Mutex<mpsc::UnboundedReceiver<Packet>>,
    chain: Vec<Vec<u8>>,
    binding: [u8; protocol::EXPORTER_LEN],
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for CoapSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoapSession")
            .field("server", &self.shared.socket.peer_addr().ok())
            .finish()
    }
}

impl Drop for CoapSession {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn lost() -> AgentError {
    AgentError::Connection("the CoAP session ended".into())
}

impl CoapSession {
    /// Opens a DTLS session with the listener at `server` with `context` (the device's
    /// certificate and key). `check` looks at the server's chain before anything is sent.
    pub async fn connect(
        server: std::net::SocketAddr,
        context: &SslContext,
        timing: Timing,
        check: impl FnOnce(&[Vec<u8>]) -> Result<(), AgentError>,
    ) -> Result<CoapSession, AgentError> {
        let bind: std::net::SocketAddr = if server.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let conn = |e: std::io::Error| AgentError::Connection(format!("CoAP {server}: {e}"));
        let socket = UdpSocket::bind(bind).await.map_err(conn)?;
        socket.connect(server).await.map_err(conn)?;
        let stream = dtls::handshake(&socket, context, timing.connect).await?;
        let chain = dtls::server_chain(&stream);
        let binding = dtls::binding(&stream)?;
        if let Err(e) = check(&chain) {
            let mut stream = stream;
            let _ = stream.shutdown();
            let _ = dtls::flush(&socket, std::mem::take(&mut stream.get_mut().outbox)).await;
            return Err(e);
        }
        let rng = SystemRandom::new();
        let mut first = [0u8; 2];
        let _ = rng.fill(&mut first);
        let shared = Arc::new(Shared {
            socket,
            tls: Mutex::new(stream),
            awaited: Mutex::new(HashMap::new()),
            next_id: AtomicU16::new(u16::from_be_bytes(first)),
            rng,
            timing,
            heard: Mutex::new(Instant::now()),
            observation: Mutex::new(None),
            notifications: Mutex::new(VecDeque::new()),
            ended: watch::channel(None).0,
        });
        let (to_commands, commands) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(shared.clone().read(to_commands)),
            tokio::spawn(shared.clone().keep_alive()),
        ];
        Ok(CoapSession {
            shared,
            turn: tokio::sync::Mutex::new(()),
            commands: tokio::sync::Mutex::new(commands),
            chain,
            binding,
            tasks,
        })
    }

    /// The certificate chain the server presented (leaf first), DER.
    pub fn server_chain(&self) -> Vec<Vec<u8>> {
        self.chain.clone()
    }

    /// The exporter value that binds requests to this session.
    pub fn binding(&self) -> [u8; protocol::EXPORTER_LEN] {
        self.binding
    }

    /// Sends a request and returns the server's response, whatever it is.
    pub async fn exchange(&self, request: &Request) -> Result<Response, AgentError> {
        match request {
            Request::FirmwareChunk {
                digest,
                offset,
                length,
            } => self.firmware(digest, *offset, *length).await,
            Request::WipeAttestation(signed) => {
                let answer = self
                    .request(
                        RequestType::Post,
                        wire::WIPE,
                        Some(wire::COSE_SIGN1),
                        signed,
                    )
                    .await?;
                Ok(match answer.code {
                    ResponseType::Changed => Response::Ack,
                    _ => answer.refusal(),
                })
            }
            other => {
                let body = message::encode(other);
                let answer = self
                    .request(RequestType::Post, wire::REQUEST, Some(wire::CBOR), &body)
                    .await?;
                match answer.code {
                    ResponseType::Changed if answer.format == Some(wire::CBOR) => {
                        Ok(message::decode(&answer.body, message::MAX_RESPONSE)?)
                    }
                    _ => Ok(answer.refusal()),
                }
            }
        }
    }

    /// `length` bytes of an image from `offset`, by Block2 from the block holding `offset`.
    async fn firmware(
        &self,
        digest: &[u8],
        offset: u64,
        length: u32,
    ) -> Result<Response, AgentError> {
        let path = format!("{}{}", wire::FIRMWARE, certs::inspect::hex(digest));
        let mut num = u32::try_from(offset / BLOCK as u64)
            .map_err(|_| AgentError::Protocol("a firmware offset beyond any image".into()))?;
        let mut skip = (offset % BLOCK as u64) as usize;
        let mut out = Vec::new();
        while out.len() < length as usize {
            let (answer, more) = self.block(RequestType::Get, &path, num).await?;
            if answer.code != ResponseType::Content {
                return Ok(answer.refusal());
            }
            out.extend_from_slice(answer.body.get(skip..).unwrap_or_default());
            skip = 0;
            if !more {
                break;
            }
            num += 1;
        }
        out.truncate(length as usize);
        Ok(Response::Chunk(out))
    }

    /// Waits for the next command (observing the command resource the first time); `None`
    /// once the session is lost.
    pub async fn next_command(&self) -> Option<Result<Result<Command, DecodeError>, AgentError>> {
        if self.observed().is_none()
            && let Err(e) = self.observe().await
        {
            return Some(Err(e));
        }
        let notification = self.commands.lock().await.recv().await?;
        let mut body = notification.payload.clone();
        if let Some((0, true, _)) = block_option(&notification, CoapOption::Block2) {
            // The rest of a large command (RFC 7959 3.4).
            let mut num = 1;
            loop {
                let (answer, more) = match self.block(RequestType::Get, wire::COMMANDS, num).await {
                    Ok(next) => next,
                    Err(e) => return Some(Err(e)),
                };
                if answer.code != ResponseType::Content || body.len() > message::MAX_RESPONSE {
                    return Some(Err(AgentError::Protocol(format!(
                        "the rest of a command: {:?}",
                        answer.code
                    ))));
                }
                body.extend_from_slice(&answer.body);
                if !more {
                    break;
                }
                num += 1;
            }
        }
        Some(Ok(message::decode::<Command>(&body, message::MAX_RESPONSE)))
    }

    fn observed(&self) -> Option<Vec<u8>> {
        lock(&self.shared.observation).clone()
    }

    /// Registers the observation of the commands (after the hello that opened the device's
    /// session on the server).
    async fn observe(&self) -> Result<(), AgentError> {
        let _turn = self.turn.lock().await;
        let token = self.shared.token();
        let mut packet = self.shared.packet(RequestType::Get, wire::COMMANDS, &token);
        packet.add_option(CoapOption::Observe, Vec::new());
        // Set before sending: the first notification may overtake the answer.
        *lock(&self.shared.observation) = Some(token.clone());
        let answer = self.shared.transmit(&packet, Awaited::Token(token)).await?;
        let registered = matches!(
            answer.header.code,
            MessageClass::Response(ResponseType::Content)
        ) && answer.get_option(CoapOption::Observe).is_some();
        if registered {
            Ok(())
        } else {
            *lock(&self.shared.observation) = None;
            self.close();
            Err(AgentError::Protocol(format!(
                "the onboarder refused the observation of commands: {}",
                String::from_utf8_lossy(&answer.payload)
            )))
        }
    }

    /// Answers the command last received.
    pub async fn reply(&self, reply: &CommandReply) -> Result<(), AgentError> {
        let body = message::encode(reply);
        let answer = self
            .request(RequestType::Post, wire::REPLY, Some(wire::CBOR), &body)
            .await?;
        match answer.code {
            ResponseType::Changed => Ok(()),
            code => Err(AgentError::Protocol(format!(
                "reply refused ({code:?}): {}",
                String::from_utf8_lossy(&answer.body)
            ))),
        }
    }

    /// A request with `body` (in Block1 pieces if larger than a block), and the whole answer
    /// (its Block2 pieces joined).
    async fn request(
        &self,
        method: RequestType,
        path: &str,
        format: Option<u16>,
        body: &[u8],
    ) -> Result<Answer, AgentError> {
        let _turn = self.turn.lock().await;
        let shared = &self.shared;
        let pieces: Vec<&[u8]> = if body.len() > UPLOAD_BLOCK {
            body.chunks(UPLOAD_BLOCK).collect()
        } else {
            vec![body]
        };
        let last = pieces.len() - 1;
        let mut response = None;
        for (num, piece) in pieces.iter().enumerate() {
            let token = shared.token();
            let mut packet = shared.packet(method, path, &token);
            if let Some(format) = format {
                packet.add_option(CoapOption::ContentFormat, wire::encode_uint(format.into()));
            }
            if last > 0 {
                let more = num < last;
                packet.add_option(
                    CoapOption::Block1,
                    wire::encode_block(num as u32, more, UPLOAD_BLOCK),
                );
            }
            packet.payload = piece.to_vec();
            let answer = shared.transmit(&packet, Awaited::Token(token)).await?;
            let continued = matches!(
                answer.header.code,
                MessageClass::Response(ResponseType::Continue)
            );
            if num < last && !continued {
                // Refused part way (4.08, 4.13, ...): that is the answer.
                response = Some(answer);
                break;
            }
            response = Some(answer);
        }
        let first = response.ok_or_else(lost)?;
        let mut answer = Answer {
            code: code_of(&first),
            format: first
                .get_option(CoapOption::ContentFormat)
                .and_then(|v| v.front())
                .and_then(|v| wire::uint(v, 2))
                .and_then(|v| u16::try_from(v).ok()),
            body: first.payload.clone(),
        };
        let mut next = block_option(&first, CoapOption::Block2);
        while let Some((num, true, _)) = next {
            if answer.body.len() > message::MAX_RESPONSE {
                return Err(AgentError::Protocol("an answer beyond its limit".into()));
            }
            let token = shared.token();
            let mut packet = shared.packet(method, path, &token);
            packet.add_option(
                CoapOption::Block2,
                wire::encode_block(num + 1, false, BLOCK),
            );
            let piece = shared.transmit(&packet, Awaited::Token(token)).await?;
            if code_of(&piece) != answer.code {
                return Err(AgentError::Protocol(format!(
                    "block {} of an answer: {:?}",
                    num + 1,
                    code_of(&piece)
                )));
            }
            answer.body.extend_from_slice(&piece.payload);
            next = block_option(&piece, CoapOption::Block2);
        }
        Ok(answer)
    }

    /// Block `num` of `path`'s answer, and whether more follow.
    async fn block(
        &self,
        method: RequestType,
        path: &str,
        num: u32,
    ) -> Result<(Answer, bool), AgentError> {
        let _turn = self.turn.lock().await;
        let token = self.shared.token();
        let mut packet = self.shared.packet(method, path, &token);
        packet.add_option(CoapOption::Block2, wire::encode_block(num, false, BLOCK));
        let piece = self.shared.transmit(&packet, Awaited::Token(token)).await?;
        let more = match block_option(&piece, CoapOption::Block2) {
            Some((n, more, _)) if n == num => more,
            Some((n, _, _)) => {
                return Err(AgentError::Protocol(format!(
                    "asked for block {num}, got block {n}"
                )));
            }
            None => false,
        };
        Ok((
            Answer {
                code: code_of(&piece),
                format: None,
                body: piece.payload,
            },
            more,
        ))
    }

    /// Ends the session (a close_notify tells the server).
    pub fn close(&self) {
        let goodbye = {
            let mut tls = lock(&self.shared.tls);
            let _ = tls.shutdown();
            std::mem::take(&mut tls.get_mut().outbox)
        };
        for d in goodbye {
            let _ = self.shared.socket.try_send(&d);
        }
        self.shared.end("closed by the device");
    }

    /// Resolves when the session is lost or closed, with the reason.
    pub async fn closed(&self) -> String {
        let mut ended = self.shared.ended.subscribe();
        match ended.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the CoAP session ended".into(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn code_of(packet: &Packet) -> ResponseType {
    match packet.header.code {
        MessageClass::Response(code) => code,
        _ => ResponseType::UnKnown,
    }
}

fn block_option(packet: &Packet, option: CoapOption) -> Option<(u32, bool, usize)> {
    wire::block(packet.get_option(option)?.front()?)
}

impl Shared {
    fn token(&self) -> Vec<u8> {
        let mut token = vec![0u8; 4];
        let _ = self.rng.fill(&mut token);
        token
    }

    fn message_id(&self) -> u16 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A confirmable request for `path` with `token`.
    fn packet(&self, method: RequestType, path: &str, token: &[u8]) -> Packet {
        let mut packet = Packet::new();
        packet.header.set_type(MessageType::Confirmable);
        packet.header.code = MessageClass::Request(method);
        packet.set_token(token.to_vec());
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            packet.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
        }
        packet
    }

    fn end(&self, reason: &str) {
        let first = self.ended.send_if_modified(|ended| {
            if ended.is_some() {
                return false;
            }
            *ended = Some(reason.to_string());
            true
        });
        if first {
            tracing::debug!(server = ?self.socket.peer_addr().ok(), "CoAP session ended: {reason}");
        }
        // Whoever waits hears it now.
        lock(&self.awaited).clear();
    }

    fn is_ended(&self) -> bool {
        self.ended.borrow().is_some()
    }

    /// Protects and sends one message.
    async fn send(&self, message: &[u8]) -> Result<(), AgentError> {
        #[cfg(feature = "capture")]
        super::capture::record("coap", message);
        let datagrams = {
            let mut tls = lock(&self.tls);
            tls.ssl_write(message)
                .map_err(|e| AgentError::Connection(format!("DTLS: {e}")))?;
            std::mem::take(&mut tls.get_mut().outbox)
        };
        dtls::flush(&self.socket, datagrams).await
    }

    /// Sends a confirmable message until what it awaits arrives: from about `ack_timeout`
    /// (randomised up to half again, RFC 7252 4.8), doubling, until `give_up`.
    async fn transmit(&self, packet: &Packet, awaited: Awaited) -> Result<Packet, AgentError> {
        if self.is_ended() {
            return Err(lost());
        }
        let mut packet = packet.clone();
        packet.header.message_id = self.message_id();
        let awaited = match awaited {
            Awaited::Id(_) => Awaited::Id(packet.header.message_id),
            token => token,
        };
        let bytes = packet
            .to_bytes()
            .map_err(|e| AgentError::Protocol(format!("CoAP message: {e:?}")))?;
        let (tx, mut rx) = oneshot::channel();
        lock(&self.awaited).insert(awaited.clone(), tx);
        let mut b = [0u8; 1];
        let _ = self.rng.fill(&mut b);
        let mut wait = self
            .timing
            .ack_timeout
            .mul_f64(1.0 + f64::from(b[0]) / 512.0);
        let deadline = Instant::now() + self.timing.give_up;
        let result = loop {
            if let Err(e) = self.send(&bytes).await {
                break Err(e);
            }
            match tokio::time::timeout_at((Instant::now() + wait).min(deadline), &mut rx).await {
                Ok(Ok(answer)) => break Ok(answer),
                Ok(Err(_)) => break Err(lost()),
                Err(_) if Instant::now() >= deadline => {
                    self.end("the onboarder stopped answering over CoAP");
                    break Err(AgentError::Connection(format!(
                        "no CoAP answer within {:?}",
                        self.timing.give_up
                    )));
                }
                Err(_) => wait *= 2,
            }
        };
        lock(&self.awaited).remove(&awaited);
        result
    }

    /// Reads the socket: answers to whoever awaits them, notifications to the commands. Ends
    /// with the session (which closes the commands).
    async fn read(self: Arc<Self>, commands: mpsc::UnboundedSender<Packet>) {
        let mut buf = vec![0u8; 65_536];
        let mut ended = self.ended.subscribe();
        loop {
            let received = tokio::select! {
                received = self.socket.recv(&mut buf) => received,
                _ = ended.wait_for(Option::is_some) => return,
            };
            let n = match received {
                Ok(n) => n,
                Err(e) => return self.end(&format!("CoAP socket: {e}")),
            };
            let (messages, outgoing, failed) = {
                let mut tls = lock(&self.tls);
                tls.get_mut().inbox.push_back(buf[..n].to_vec());
                let mut messages = Vec::new();
                let mut failed = None;
                let mut plain = vec![0u8; 65_536];
                loop {
                    match tls.ssl_read(&mut plain) {
                        Ok(0) => break,
                        Ok(n) => messages.push(plain[..n].to_vec()),
                        Err(e) if e.code() == SslErrorCode::WANT_READ => break,
                        Err(e) if e.code() == SslErrorCode::ZERO_RETURN => {
                            failed = Some("closed by the onboarder".to_string());
                            break;
                        }
                        Err(e) => {
                            failed = Some(format!("DTLS: {e}"));
                            break;
                        }
                    }
                }
                (messages, std::mem::take(&mut tls.get_mut().outbox), failed)
            };
            let _ = dtls::flush(&self.socket, outgoing).await;
            if let Some(reason) = failed {
                return self.end(&reason);
            }
            *lock(&self.heard) = Instant::now();
            for m in messages {
                if let Ok(packet) = Packet::from_bytes(&m) {
                    self.dispatch(packet, &commands).await;
                }
            }
        }
    }

    async fn dispatch(&self, packet: Packet, commands: &mpsc::UnboundedSender<Packet>) {
        let id = packet.header.message_id;
        let confirmable = packet.header.get_type() == MessageType::Confirmable;
        if packet.header.code == MessageClass::Empty {
            // The acknowledgement or reset of a ping.
            if let Some(tx) = lock(&self.awaited).remove(&Awaited::Id(id)) {
                let _ = tx.send(packet);
            }
            return;
        }
        let token = packet.get_token().to_vec();
        let waiter = lock(&self.awaited).remove(&Awaited::Token(token.clone()));
        let is_response = matches!(packet.header.code, MessageClass::Response(_));
        let observation = lock(&self.observation).clone();
        let notification = is_response && waiter.is_none() && observation == Some(token);
        if confirmable {
            let mut ack = Packet::new();
            ack.header.set_type(if waiter.is_some() || notification {
                MessageType::Acknowledgement
            } else {
                MessageType::Reset
            });
            ack.header.code = MessageClass::Empty;
            ack.header.message_id = id;
            if let Ok(bytes) = ack.to_bytes() {
                let _ = self.send(&bytes).await;
            }
        }
        if let Some(tx) = waiter {
            let _ = tx.send(packet);
        } else if notification {
            let mut seen = lock(&self.notifications);
            if seen.contains(&id) {
                return;
            }
            seen.push_back(id);
            if seen.len() > REMEMBERED {
                seen.pop_front();
            }
            drop(seen);
            // The registration's own answer carries no command.
            if !packet.payload.is_empty() {
                let _ = commands.send(packet);
            }
        }
    }

    /// Pings after a keep-alive interval of silence; an unanswered ping loses the session.
    async fn keep_alive(self: Arc<Self>) {
        let every = self.timing.keep_alive.max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every / 2).await;
            if self.is_ended() {
                return;
            }
            if lock(&self.heard).elapsed() < every {
                continue;
            }
            let mut ping = Packet::new();
            ping.header.set_type(MessageType::Confirmable);
            ping.header.code = MessageClass::Empty;
            if self.transmit(&ping, Awaited::Id(0)).await.is_err() {
                return;
            }
        }
    }
}
