//! DTLS 1.2 (RFC 6347) with X.509 on both sides, as RFC 9148 requires for EST over CoAP:
//! OpenSSL's DTLS (the `openssl` crate) over datagrams the listener routes itself. A session
//! exists only once the client returned a cookie ([`super::cookie`]); OpenSSL then takes the
//! handshake on from that ClientHello (`DTLSv1_listen`, which the crate does not wrap). The
//! client's certificate is checked in the handshake by the trust store every transport uses
//! (anchors in force, revocations): one that fails is refused with an alert, and nothing of it
//! reaches the service.

use std::os::raw::{c_int, c_long, c_void};
use std::sync::Arc;

use foreign_types::ForeignTypeRef;
use openssl::pkey::PKey;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslMethod, SslOptions, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::{X509, X509Ref, X509StoreContextRef, X509VerifyResult};
use rustls_pki_types::{CertificateDer, UnixTime};

use protocol::coap::Pipe;

use crate::transport::tls::IdentityPair;
use crate::trust::TrustStore;

/// Largest datagram we send: the IPv6 minimum MTU, less headers.
pub const MTU: u32 = 1152;

/// `SSL_ctrl` command of `DTLSv1_handle_timeout` (a macro in C).
const DTLS_CTRL_HANDLE_TIMEOUT: c_int = 74;

unsafe extern "C" {
    // OpenSSL's listen step, which the `openssl` crate does not expose: it reads the
    // ClientHello from the SSL's read BIO, checks its cookie with the context's callback and,
    // if good, sets the SSL to go on with the handshake from that message.
    fn DTLSv1_listen(s: *mut openssl_sys::SSL, client: *mut c_void) -> c_int;
    fn BIO_ADDR_new() -> *mut c_void;
    fn BIO_ADDR_free(a: *mut c_void);
    fn X509_STORE_CTX_get0_cert(ctx: *mut openssl_sys::X509_STORE_CTX) -> *mut openssl_sys::X509;
    fn X509_STORE_CTX_get0_untrusted(ctx: *mut openssl_sys::X509_STORE_CTX) -> *mut c_void;
    fn OPENSSL_sk_num(stack: *const c_void) -> c_int;
    fn OPENSSL_sk_value(stack: *const c_void, i: c_int) -> *mut c_void;
    fn SSL_ctrl(s: *mut openssl_sys::SSL, cmd: c_int, larg: c_long, parg: *mut c_void) -> c_long;
}

/// Why a session ended or never began.
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    /// The handshake failed: a refused certificate, a broken or unexpected message.
    #[error("DTLS handshake: {0}")]
    Handshake(String),
    /// The session failed after the handshake.
    #[error("DTLS: {0}")]
    Session(String),
    /// The server could not set DTLS up.
    #[error("DTLS setup: {0}")]
    Setup(String),
}

/// What an open session knows of its peer.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// The client's certificate chain, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// The session's exporter value (RFC 5705, under RFC 9266's label): CSRs and voucher
    /// requests are bound to it.
    pub binding: [u8; protocol::EXPORTER_LEN],
}

/// One peer's DTLS session.
pub struct Session {
    stream: SslStream<Pipe>,
    peer: Option<PeerIdentity>,
}

/// What one datagram did to a session.
#[derive(Debug, Default)]
pub struct Progress {
    /// Application data received (each a CoAP message).
    pub received: Vec<Vec<u8>>,
    /// Whether the handshake finished with this datagram.
    pub opened: bool,
}

impl Session {
    /// The peer, once the handshake is done.
    pub fn peer(&self) -> Option<&PeerIdentity> {
        self.peer.as_ref()
    }

    /// Takes the datagrams to send.
    pub fn outgoing(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.stream.get_mut().outbox)
    }

    /// Feeds a datagram from the peer.
    pub fn receive(&mut self, datagram: &[u8]) -> Result<Progress, DtlsError> {
        self.stream.get_mut().inbox.push_back(datagram.to_vec());
        let mut progress = Progress::default();
        if self.peer.is_none() {
            match self.stream.accept() {
                Ok(()) => {
                    self.peer = Some(self.identity()?);
                    progress.opened = true;
                }
                Err(e) if e.code() == ErrorCode::WANT_READ => return Ok(progress),
                Err(e) => return Err(DtlsError::Handshake(e.to_string())),
            }
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.stream.ssl_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => progress.received.push(buf[..n].to_vec()),
                Err(e) if e.code() == ErrorCode::WANT_READ => break,
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    return Err(DtlsError::Session("closed by the peer".into()));
                }
                Err(e) => return Err(DtlsError::Session(e.to_string())),
            }
        }
        Ok(progress)
    }

    /// Sends one application message (a CoAP message, one record).
    pub fn send(&mut self, message: &[u8]) -> Result<(), DtlsError> {
        self.stream
            .ssl_write(message)
            .map(|_| ())
            .map_err(|e| DtlsError::Session(e.to_string()))
    }

    /// Retransmits the last flight of the handshake if its timer ran out (OpenSSL keeps the
    /// timer; the listener calls this on its tick).
    pub fn on_tick(&mut self) {
        if self.peer.is_none() {
            // SAFETY: the SSL is valid; the command takes no argument.
            unsafe {
                SSL_ctrl(
                    self.stream.ssl().as_ptr(),
                    DTLS_CTRL_HANDLE_TIMEOUT,
                    0,
                    std::ptr::null_mut(),
                );
            }
        }
    }

    /// Closes the session (a close_notify to send).
    pub fn close(&mut self) {
        let _ = self.stream.shutdown();
    }

    fn identity(&self) -> Result<PeerIdentity, DtlsError> {
        let ssl = self.stream.ssl();
        let leaf = ssl
            .peer_certificate()
            .ok_or_else(|| DtlsError::Handshake("no client certificate".into()))?;
        let der = |c: &X509Ref| c.to_der().map_err(|e| DtlsError::Handshake(e.to_string()));
        let mut chain = vec![der(&leaf)?];
        if let Some(rest) = ssl.peer_cert_chain() {
            for c in rest {
                let c = der(c)?;
                if !chain.contains(&c) {
                    chain.push(c);
                }
            }
        }
        let mut binding = [0u8; protocol::EXPORTER_LEN];
        let label = std::str::from_utf8(protocol::TLS_EXPORTER_LABEL)
            .map_err(|e| DtlsError::Handshake(e.to_string()))?;
        ssl.export_keying_material(&mut binding, label, None)
            .map_err(|e| DtlsError::Handshake(format!("exporter: {e}")))?;
        Ok(PeerIdentity { chain, binding })
    }
}

/// The DTLS server for one registrar identity: OpenSSL's context, checking clients against
/// the trust store.
pub struct Dtls {
    context: SslContext,
    /// The identity's version it presents.
    pub version: u64,
}

impl Dtls {
    /// A server presenting the registrar's `identity`, checking clients against `trust` at
    /// the time `clock` gives.
    pub fn new(
        identity: &IdentityPair,
        trust: Arc<TrustStore>,
        clock: crate::service::Clock,
    ) -> Result<Self, DtlsError> {
        let setup = |e: openssl::error::ErrorStack| DtlsError::Setup(e.to_string());
        let chain = &identity.chain;
        let key_pem = identity.key_pem.as_bytes();
        let mut b = SslContext::builder(SslMethod::dtls()).map_err(setup)?;
        b.set_min_proto_version(Some(SslVersion::DTLS1_2))
            .map_err(setup)?;
        b.set_max_proto_version(Some(SslVersion::DTLS1_2))
            .map_err(setup)?;
        // RFC 7925's mandatory suite (which RFC 9148 points to), and GCM beside it.
        b.set_cipher_list(
            "ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384",
        )
        .map_err(setup)?;
        let (leaf, rest) = chain
            .split_first()
            .ok_or_else(|| DtlsError::Setup("no registrar certificate".into()))?;
        let leaf = X509::from_der(leaf).map_err(setup)?;
        b.set_certificate(&leaf).map_err(setup)?;
        for c in rest {
            b.add_extra_chain_cert(X509::from_der(c).map_err(setup)?)
                .map_err(setup)?;
        }
        let key = PKey::private_key_from_pem(key_pem).map_err(setup)?;
        b.set_private_key(&key).map_err(setup)?;
        b.check_private_key().map_err(setup)?;
        b.set_options(
            SslOptions::COOKIE_EXCHANGE | SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET,
        );
        b.set_verify_callback(
            SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            move |_, store| verify(store, &trust, &clock),
        );
        // DTLSv1_listen wants both callbacks. The listener checked the cookie before OpenSSL
        // sees the hello (`super::cookie`), so it is accepted here, and OpenSSL never makes
        // one.
        b.set_cookie_generate_cb(|_, out| {
            out[..1].copy_from_slice(&[0]);
            Ok(1)
        });
        b.set_cookie_verify_cb(|_, _| true);
        Ok(Dtls {
            context: b.build(),
            version: identity.version,
        })
    }

    /// The session a ClientHello whose cookie the listener checked begins, or `None` if
    /// OpenSSL does not take it as one.
    pub fn begin(&self, datagram: &[u8]) -> Result<Option<Session>, DtlsError> {
        let failed = |e: openssl::error::ErrorStack| DtlsError::Handshake(e.to_string());
        let mut ssl = Ssl::new(&self.context).map_err(failed)?;
        ssl.set_mtu(MTU).map_err(failed)?;
        let mut pipe = Pipe::default();
        pipe.inbox.push_back(datagram.to_vec());
        let stream = SslStream::new(ssl, pipe).map_err(failed)?;
        // SAFETY: the SSL is valid for the call; the address is allocated and freed here.
        let listened = unsafe {
            let addr = BIO_ADDR_new();
            let r = DTLSv1_listen(stream.ssl().as_ptr(), addr);
            BIO_ADDR_free(addr);
            r
        };
        if listened != 1 {
            return Ok(None);
        }
        let mut session = Session { stream, peer: None };
        match session.stream.accept() {
            Ok(()) => return Err(DtlsError::Handshake("finished in one message".into())),
            Err(e) if e.code() == ErrorCode::WANT_READ => {}
            Err(e) => return Err(DtlsError::Handshake(e.to_string())),
        }
        Ok(Some(session))
    }
}

/// The verify callback: the whole presented chain, checked by the trust store (once per
/// depth OpenSSL visits; the answer is the same each time).
fn verify(
    store: &mut X509StoreContextRef,
    trust: &TrustStore,
    clock: &crate::service::Clock,
) -> bool {
    let chain = presented_chain(store);
    let Some((leaf, rest)) = chain.split_first() else {
        return false;
    };
    let leaf = CertificateDer::from(leaf.as_slice());
    let rest: Vec<CertificateDer<'_>> = rest
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(clock()));
    match trust.verify_client(&leaf, &rest, now) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("DTLS client certificate refused: {e:?}");
            // SAFETY: the values are OpenSSL's X509_V_ERR_* codes.
            store.set_error(unsafe { X509VerifyResult::from_raw(verify_error(&e)) });
            false
        }
    }
}

/// The X.509 verification error whose alert (OpenSSL maps one to the other) tells the device
/// why its certificate was refused, as the QUIC listener's alerts do: revoked, expired,
/// unknown CA, or bad.
fn verify_error(e: &webpki::Error) -> c_int {
    match e {
        webpki::Error::CertRevoked => openssl_sys::X509_V_ERR_CERT_REVOKED,
        webpki::Error::CertExpired { .. } => openssl_sys::X509_V_ERR_CERT_HAS_EXPIRED,
        webpki::Error::UnknownIssuer => openssl_sys::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
        _ => openssl_sys::X509_V_ERR_CERT_REJECTED,
    }
}

/// The leaf and the untrusted certificates the peer sent, DER.
fn presented_chain(store: &mut X509StoreContextRef) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    // SAFETY: the store context is valid during the callback; the certificates it points to
    // are borrowed (get0) and only read here.
    unsafe {
        let ctx = store.as_ptr();
        let leaf = X509_STORE_CTX_get0_cert(ctx);
        if leaf.is_null() {
            return out;
        }
        if let Ok(der) = X509Ref::from_ptr(leaf).to_der() {
            out.push(der);
        }
        let untrusted = X509_STORE_CTX_get0_untrusted(ctx) as *const c_void;
        if untrusted.is_null() {
            return out;
        }
        for i in 0..OPENSSL_sk_num(untrusted) {
            let cert = OPENSSL_sk_value(untrusted, i) as *mut openssl_sys::X509;
            if cert.is_null() {
                continue;
            }
            if let Ok(der) = X509Ref::from_ptr(cert).to_der()
                && !out.contains(&der)
            {
                out.push(der);
            }
        }
    }
    out
}
