//! The agent's side of the native QUIC protocol.
//!
//! Two TLS configurations: the *provisional* one used for onboarding, which accepts whatever
//! certificate the registrar presents (it still checks the handshake signature, so the server
//! holds that certificate's key) and leaves the decision to the voucher (RFC 8995 5.1); and the
//! *operational* one, which trusts only the owner CA pinned by the voucher.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::frame_io;
use protocol::message::{self, Command, CommandReply, MAX_RESPONSE, Request, Response};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::{AgentError, CredentialRefusal};
use crate::platform::DeviceKey;
use crate::platform::key::TlsKey;

/// Server name used on provisional connections (any valid name: it is not checked).
const PROVISIONAL_NAME: &str = "registrar.invalid";

/// ring, with TLS_AES_128_GCM_SHA256 preferred: the strength of our P-256 keys, and cheaper
/// than the default first choice on small CPUs (the server prefers it too).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Accepts the registrar's certificate provisionally; the voucher decides later.
#[derive(Debug)]
struct ProvisionalVerifier(Arc<CryptoProvider>);

impl ServerCertVerifier for ProvisionalVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Always presents the same client certificate.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn client_cert(chain: &[Vec<u8>], key: Arc<dyn DeviceKey>) -> Result<Arc<ClientCert>, AgentError> {
    let chain = chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    Ok(Arc::new(ClientCert(Arc::new(CertifiedKey::new(
        chain,
        Arc::new(TlsKey::new(key)?),
    )))))
}

/// Timeouts of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long a handshake may take before the attempt is given up (and retried after the
    /// backoff): a server that is down must not hold the device for a whole idle timeout.
    pub connect: Duration,
    /// A connection with no traffic for this long is considered dead.
    pub idle: Duration,
    /// Keep-alive interval until the onboarder sets its own (the enrollment's
    /// `heartbeat_secs`).
    pub keep_alive: Duration,
    /// First retransmission timeout of a CoAP message (RFC 7252's ACK_TIMEOUT).
    pub coap_ack: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            coap_ack: Duration::from_secs(2),
        }
    }
}

impl Timeouts {
    /// These timeouts with the keep-alive the onboarder asked for, and an idle timeout of at
    /// least three keep-alives.
    pub fn with_heartbeat(self, heartbeat: Duration) -> Timeouts {
        let keep_alive = heartbeat.max(Duration::from_secs(1));
        Timeouts {
            keep_alive,
            idle: self.idle.max(keep_alive * 3),
            ..self
        }
    }
}

/// A QUIC client configuration of `tls` (our ALPN) with `timeouts`.
pub fn quic_config(
    tls: rustls::ClientConfig,
    timeouts: Timeouts,
) -> Result<quinn::ClientConfig, AgentError> {
    let mut tls = tls;
    tls.alpn_protocols = vec![protocol::ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| AgentError::Connection(format!("TLS configuration: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // The server opens a stream per command and the agent answers them one by one: quinn's
    // default of 100 streams is allocated up front (about 11 KiB per connection), 4 leave
    // room. The windows fit the largest message (a 128 KiB firmware chunk) instead of quinn's
    // bulk-transfer defaults, so a small device buffers at most that much.
    transport
        .max_idle_timeout(timeouts.idle.try_into().ok())
        .keep_alive_interval(Some(timeouts.keep_alive))
        .max_concurrent_uni_streams(0u32.into())
        .max_concurrent_bidi_streams(4u32.into())
        .stream_receive_window((256u32 * 1024).into())
        .receive_window((512u32 * 1024).into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The onboarding (IDevID) configuration with provisional trust in the registrar.
pub fn provisional_config(
    idevid_chain: &[Vec<u8>],
    key: Arc<dyn DeviceKey>,
    timeouts: Timeouts,
) -> Result<quinn::ClientConfig, AgentError> {
    quic_config(provisional_tls(idevid_chain, key)?, timeouts)
}

/// The onboarding (IDevID) TLS client with provisional trust in the registrar (TLS 1.3), for
/// QUIC or HTTPS.
pub fn provisional_tls(
    idevid_chain: &[Vec<u8>],
    key: Arc<dyn DeviceKey>,
) -> Result<rustls::ClientConfig, AgentError> {
    let provider = provider();
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| AgentError::Connection(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ProvisionalVerifier(provider)))
        .with_client_cert_resolver(client_cert(idevid_chain, key)?);
    Ok(tls)
}

/// The operational (LDevID) configuration, trusting only the owner roots the device holds, at
/// the time of `clock`.
pub fn operational_config(
    ldevid_chain: &[Vec<u8>],
    key: Arc<dyn DeviceKey>,
    roots: &[Vec<u8>],
    timeouts: Timeouts,
    clock: &crate::Clock,
) -> Result<quinn::ClientConfig, AgentError> {
    quic_config(operational_tls(ldevid_chain, key, roots, clock)?, timeouts)
}

/// The operational TLS client (LDevID, the owner roots only, TLS 1.3), for QUIC or HTTPS.
pub fn operational_tls(
    ldevid_chain: &[Vec<u8>],
    key: Arc<dyn DeviceKey>,
    roots: &[Vec<u8>],
    clock: &crate::Clock,
) -> Result<rustls::ClientConfig, AgentError> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(CertificateDer::from(root.clone()))
            .map_err(|e| AgentError::Connection(format!("owner root: {e}")))?;
    }
    let tls = rustls::ClientConfig::builder_with_details(provider(), Arc::new(clock.clone()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| AgentError::Connection(e.to_string()))?
        .with_root_certificates(store)
        .with_client_cert_resolver(client_cert(ldevid_chain, key)?);
    Ok(tls)
}

/// A client endpoint able to reach `server`.
pub fn endpoint_for(server: SocketAddr) -> Result<quinn::Endpoint, AgentError> {
    let bind: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse()
    } else {
        "0.0.0.0:0".parse()
    }
    .map_err(|_| AgentError::Connection("bind address".into()))?;
    let err = |e: std::io::Error| AgentError::Connection(format!("binding UDP: {e}"));
    let runtime = quinn::default_runtime()
        .ok_or_else(|| AgentError::Connection("QUIC needs a Tokio runtime".into()))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        udp_socket(bind).map_err(err)?,
        runtime,
    )
    .map_err(err)
}

/// A UDP socket with buffers large enough for many sessions sharing one endpoint (a gateway,
/// a simulator); the kernel caps the size at `net.core.rmem_max`.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    const BUFFER: usize = 4 * 1024 * 1024;
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(BUFFER);
    let _ = socket.set_send_buffer_size(BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A command as received: decoded (or why not), and the stream to answer on.
pub type IncomingCommand = (Result<Command, protocol::DecodeError>, quinn::SendStream);

/// A connection to the onboarder.
#[derive(Debug)]
pub struct Session {
    conn: quinn::Connection,
}

fn conn_err(e: impl std::fmt::Display) -> AgentError {
    AgentError::Connection(e.to_string())
}

fn refused(reason: CredentialRefusal, e: &quinn::ConnectionError) -> AgentError {
    AgentError::CredentialRefused {
        reason,
        detail: e.to_string(),
    }
}

/// The refusal a TLS alert says, if it is about this device's certificate (RFC 8446 6.2): bad,
/// unsupported, revoked, expired or unknown certificate, unknown CA, access denied, a signature
/// in the chain or of the handshake that does not verify (decrypt_error), certificate required.
pub(crate) fn certificate_alert(alert: u8) -> Option<CredentialRefusal> {
    match alert {
        44 => Some(CredentialRefusal::Revoked),
        45 => Some(CredentialRefusal::Expired),
        48 => Some(CredentialRefusal::UnknownIssuer),
        42 | 43 | 46 | 49 | 51 | 116 => Some(CredentialRefusal::Rejected),
        _ => None,
    }
}

/// The agent's error for a connection that ended: a refusal of the device's credential (a
/// certificate alert in the handshake, or our server's unauthorized and revoked close codes)
/// is permanent; a refusal before the handshake says the server is at capacity; anything else
/// is connection trouble, tried again later.
fn connection_error(e: &quinn::ConnectionError) -> AgentError {
    match e {
        quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            AgentError::Busy(e.to_string())
        }
        quinn::ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            let alert = code.checked_sub(0x100).and_then(|a| u8::try_from(a).ok());
            match alert.and_then(certificate_alert) {
                Some(reason) => refused(reason, e),
                None => conn_err(e),
            }
        }
        // The onboarder's close codes 1 (unauthorized) and 3 (revoked).
        quinn::ConnectionError::ApplicationClosed(close) => match close.error_code.into_inner() {
            1 => refused(CredentialRefusal::Rejected, e),
            3 => refused(CredentialRefusal::Revoked, e),
            _ => conn_err(e),
        },
        other => conn_err(other),
    }
}

impl Session {
    /// Connects with `config`. On an operational session `server_name` is checked against the
    /// server's certificate; on a provisional one it is not.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        config: quinn::ClientConfig,
        server: SocketAddr,
        server_name: Option<&str>,
    ) -> Result<Session, AgentError> {
        let conn = endpoint
            .connect_with(config, server, server_name.unwrap_or(PROVISIONAL_NAME))
            .map_err(conn_err)?
            .await
            .map_err(|e| connection_error(&e))?;
        Ok(Session { conn })
    }

    /// The certificate chain the server presented (leaf first), DER.
    pub fn server_chain(&self) -> Vec<Vec<u8>> {
        self.conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default()
    }

    /// The TLS exporter value that binds requests to this session.
    pub fn binding(&self) -> Result<[u8; protocol::EXPORTER_LEN], AgentError> {
        let mut out = [0u8; protocol::EXPORTER_LEN];
        self.conn
            .export_keying_material(&mut out, protocol::EXPORTER_LABEL, b"")
            .map_err(|_| AgentError::Connection("TLS exporter unavailable".into()))?;
        Ok(out)
    }

    /// A stream error, explained by the connection's close reason when there is one (a
    /// refused certificate shows up as a lost stream in TLS 1.3).
    fn explain(&self, e: AgentError) -> AgentError {
        match (e, self.conn.close_reason()) {
            (AgentError::Connection(_), Some(reason)) => connection_error(&reason),
            (e, _) => e,
        }
    }

    /// Sends a request and returns the server's response, whatever it is.
    pub async fn exchange(&self, request: &Request) -> Result<Response, AgentError> {
        let result = async {
            let (send, mut recv) = self.conn.open_bi().await.map_err(conn_err)?;
            write_frame(send, &message::encode(request)).await?;
            read_frame(&mut recv, MAX_RESPONSE).await
        }
        .await;
        let bytes = result.map_err(|e| self.explain(e))?;
        Ok(message::decode(&bytes, MAX_RESPONSE)?)
    }

    /// Sends `bytes` exactly as given (not framed by us) and reads one framed response: for
    /// conformance tests that feed a server malformed input.
    pub async fn exchange_raw(&self, bytes: &[u8]) -> Result<Response, AgentError> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(conn_err)?;
        send.write_all(bytes).await.map_err(conn_err)?;
        send.finish().map_err(conn_err)?;
        let bytes = read_frame(&mut recv, MAX_RESPONSE).await?;
        Ok(message::decode(&bytes, MAX_RESPONSE)?)
    }

    /// Sends a request; a refusal becomes [`AgentError::Refused`].
    pub async fn call(&self, request: &Request) -> Result<Response, AgentError> {
        match self.exchange(request).await? {
            Response::Error(e) => Err(AgentError::Refused {
                code: e.code,
                message: e.message,
            }),
            other => Ok(other),
        }
    }

    /// Waits for the next command from the server; `None` once the session is closed. A
    /// command that does not decode (a newer server's) comes back as its decode error, with
    /// the stream to answer it on.
    pub async fn next_command(&self) -> Option<Result<IncomingCommand, AgentError>> {
        let (send, mut recv) = self.conn.accept_bi().await.ok()?;
        let result = async {
            let bytes = read_frame(&mut recv, MAX_RESPONSE).await?;
            Ok((message::decode::<Command>(&bytes, MAX_RESPONSE), send))
        }
        .await;
        Some(result)
    }

    /// Answers a command.
    pub async fn reply(send: quinn::SendStream, reply: &CommandReply) -> Result<(), AgentError> {
        write_frame(send, &message::encode(reply)).await
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"done");
    }

    /// Resolves when the connection is closed, with the reason.
    pub async fn closed(&self) -> String {
        self.conn.closed().await.to_string()
    }
}

async fn read_frame(recv: &mut quinn::RecvStream, limit: usize) -> Result<Vec<u8>, AgentError> {
    protocol::frame_io::read_frame(
        recv,
        limit,
        None,
        |_| Ok::<(), std::convert::Infallible>(()),
    )
    .await
    .map_err(|e| match e {
        frame_io::ReadError::Frame(e) => AgentError::Protocol(e.to_string()),
        other => conn_err(other),
    })
}

async fn write_frame(mut send: quinn::SendStream, payload: &[u8]) -> Result<(), AgentError> {
    frame_io::write_frame(&mut send, payload)
        .await
        .map_err(conn_err)?;
    send.finish().map_err(conn_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_alerts_about_the_certificate_are_refusals() {
        assert_eq!(certificate_alert(44), Some(CredentialRefusal::Revoked));
        assert_eq!(certificate_alert(45), Some(CredentialRefusal::Expired));
        assert_eq!(
            certificate_alert(48),
            Some(CredentialRefusal::UnknownIssuer)
        );
        for alert in [42, 43, 46, 49, 51, 116] {
            assert_eq!(certificate_alert(alert), Some(CredentialRefusal::Rejected));
        }
        // handshake_failure, internal_error, protocol_version: connection trouble.
        for alert in [40, 80, 70, 0] {
            assert_eq!(certificate_alert(alert), None, "{alert}");
        }
    }
}
