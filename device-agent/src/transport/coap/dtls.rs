//! The agent's DTLS 1.2 client (RFC 6347) with X.509 on both sides, as RFC 9148 asks of EST
//! over CoAP: OpenSSL's DTLS (the `openssl` crate, the same library as the onboarder's
//! listener) over datagrams this module moves itself, so the socket stays async.
//!
//! OpenSSL signs the handshake with the key itself, so this transport needs a software key
//! (the file and memory key stores); a key in a secure element would need an OpenSSL
//! provider for its token, or OSCORE + EDHOC, where the agent signs itself.
//!
//! The server's certificate is checked once the handshake is done and before any message is
//! sent, by the same rules as over QUIC: against the owner roots the device trusts and the
//! server name of its enrollment, or, while onboarding, not at all until the voucher pins the
//! registrar's CA.

use std::sync::Arc;
use std::time::Duration;

use openssl::pkey::PKey;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslMethod, SslOptions, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use protocol::coap::Pipe;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::UdpSocket;

use crate::error::{AgentError, PlatformError};
use crate::platform::DeviceKey;
use crate::transport::quic::certificate_alert;

/// Largest datagram sent: the IPv6 minimum MTU, less headers (as the listener).
const MTU: u32 = 1152;
/// How long the handshake waits for a datagram before OpenSSL is asked whether a flight is
/// due again (its timers start at one second and double).
const POLL: Duration = Duration::from_millis(250);

/// RFC 7925's mandatory suite (which RFC 9148 points to), then GCM.
const CIPHERS: &str = "ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-GCM-SHA256";

/// The DTLS client context presenting `chain` (leaf first) with `key`.
pub fn context(chain: &[Vec<u8>], key: &dyn DeviceKey) -> Result<SslContext, AgentError> {
    let setup = |e: openssl::error::ErrorStack| AgentError::Connection(format!("DTLS setup: {e}"));
    let pkcs8 = key.software_pkcs8().ok_or_else(|| {
        PlatformError::Key(
            "CoAP over DTLS needs a software key: OpenSSL signs the handshake itself".into(),
        )
    })?;
    let mut b = SslContext::builder(SslMethod::dtls_client()).map_err(setup)?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(setup)?;
    b.set_max_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(setup)?;
    b.set_cipher_list(CIPHERS).map_err(setup)?;
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| AgentError::Connection("no client certificate".into()))?;
    let leaf = X509::from_der(leaf).map_err(setup)?;
    b.set_certificate(&leaf).map_err(setup)?;
    for c in rest {
        b.add_extra_chain_cert(X509::from_der(c).map_err(setup)?)
            .map_err(setup)?;
    }
    // The error of a key that does not load says nothing of the key.
    let key = PKey::private_key_from_pkcs8(pkcs8)
        .map_err(|_| PlatformError::Key("the device key does not load into OpenSSL".into()))?;
    b.set_private_key(&key).map_err(setup)?;
    b.check_private_key()
        .map_err(|_| PlatformError::Key("the device key does not match its certificate".into()))?;
    // Checked after the handshake (`check_server`), as the module says.
    b.set_verify(SslVerifyMode::NONE);
    b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET);
    Ok(b.build())
}

/// Sends what OpenSSL wrote.
pub async fn flush(socket: &UdpSocket, datagrams: Vec<Vec<u8>>) -> Result<(), AgentError> {
    for d in datagrams {
        #[cfg(feature = "capture")]
        crate::transport::capture::record("dtls", &d);
        socket
            .send(&d)
            .await
            .map_err(|e| AgentError::Connection(format!("CoAP send: {e}")))?;
    }
    Ok(())
}

/// Runs the handshake over `socket` (connected to the server) until `limit` has passed.
pub async fn handshake(
    socket: &UdpSocket,
    context: &SslContext,
    limit: Duration,
) -> Result<SslStream<Pipe>, AgentError> {
    let failed = |e: openssl::error::ErrorStack| AgentError::Connection(format!("DTLS: {e}"));
    let mut ssl = Ssl::new(context).map_err(failed)?;
    ssl.set_mtu(MTU).map_err(failed)?;
    let mut stream = SslStream::new(ssl, Pipe::default()).map_err(failed)?;
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; 65_536];
    loop {
        // A call with nothing new to read retransmits the last flight if its timer ran out.
        let result = stream.connect();
        flush(socket, std::mem::take(&mut stream.get_mut().outbox)).await?;
        match result {
            Ok(()) => return Ok(stream),
            Err(e) if e.code() == ErrorCode::WANT_READ => {}
            Err(e) => return Err(handshake_error(&e)),
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(AgentError::Connection(format!(
                "no DTLS handshake with the onboarder within {limit:?}"
            )));
        }
        let wait = POLL.min(deadline - now);
        match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => stream.get_mut().inbox.push_back(buf[..n].to_vec()),
            Ok(Err(e)) => return Err(AgentError::Connection(format!("CoAP: {e}"))),
            Err(_) => {}
        }
    }
}

/// A failed handshake: the refusal a certificate alert says (OpenSSL reports a received
/// alert as reason 1000 + its number), or connection trouble.
fn handshake_error(e: &openssl::ssl::Error) -> AgentError {
    let alert = e
        .ssl_error()
        .and_then(|stack| stack.errors().first())
        .and_then(|first| first.reason_code().checked_sub(1000))
        .and_then(|a| u8::try_from(a).ok());
    match alert.and_then(certificate_alert) {
        Some(reason) => AgentError::CredentialRefused {
            reason,
            detail: format!("DTLS: {e}"),
        },
        None => AgentError::Connection(format!("DTLS handshake: {e}")),
    }
}

/// The certificate chain the server presented (leaf first), DER.
pub fn server_chain(stream: &SslStream<Pipe>) -> Vec<Vec<u8>> {
    stream
        .ssl()
        .peer_cert_chain()
        .map(|chain| chain.iter().filter_map(|c| c.to_der().ok()).collect())
        .unwrap_or_default()
}

/// The session's exporter value (RFC 5705 under RFC 9266's label, as the listener computes
/// it): CSRs and voucher requests are bound to it.
pub fn binding(stream: &SslStream<Pipe>) -> Result<[u8; protocol::EXPORTER_LEN], AgentError> {
    let mut out = [0u8; protocol::EXPORTER_LEN];
    let label = std::str::from_utf8(protocol::TLS_EXPORTER_LABEL)
        .map_err(|e| AgentError::Connection(e.to_string()))?;
    stream
        .ssl()
        .export_keying_material(&mut out, label, None)
        .map_err(|e| AgentError::Connection(format!("DTLS exporter: {e}")))?;
    Ok(out)
}

/// Checks the server's `chain` against `roots` for `server_name` at `now`, as rustls checks
/// it on QUIC and HTTPS.
pub fn check_server(
    chain: &[Vec<u8>],
    roots: &[Vec<u8>],
    server_name: &str,
    now: u64,
) -> Result<(), AgentError> {
    let refused = |e: String| AgentError::Connection(format!("the server's certificate: {e}"));
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(CertificateDer::from(root.clone()))
            .map_err(|e| refused(format!("owner root: {e}")))?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(store),
        crate::transport::quic::provider(),
    )
    .build()
    .map_err(|e| refused(e.to_string()))?;
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| refused("none presented".into()))?;
    let rest: Vec<CertificateDer<'_>> = rest
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| refused(e.to_string()))?;
    verifier
        .verify_server_cert(
            &CertificateDer::from(leaf.as_slice()),
            &rest,
            &name,
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(now)),
        )
        .map(|_| ())
        .map_err(|e| refused(e.to_string()))
}
