//! The standard interfaces over HTTPS, for devices and tools we did not write: EST (RFC 7030,
//! [`est`]), BRSKI (RFC 8995, [`brski`]), firmware images with byte ranges ([`firmware`]), our
//! own protocol for devices whose network blocks UDP ([`device`]), and the CRLs that every certificate we issue names as its distribution point
//! (`/crl/issuing-ca-N.crl`, DER, for anyone). Like the QUIC listener it authenticates (the same client-certificate verifier, so
//! revoked certificates are refused in the handshake), decodes, calls the
//! [`crate::service::Service`] and encodes; no lifecycle rule lives here.
//!
//! TLS 1.3 and 1.2 (EST clients often speak 1.2). A client certificate is asked for but not
//! required at the TLS layer: `cacerts` is for anyone (RFC 7030 4.1.1), everything else needs
//! an IDevID or LDevID and is refused without one. The session binding a CSR may carry is the
//! RFC 9266 tls-exporter value of the connection.

mod answer;
pub mod brski;
pub mod device;
pub mod est;
pub mod firmware;
pub mod label;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use crate::core::{Channel, DevicePeer};
use crate::error::{Error, Result};
use crate::service::Service;
use crate::transport::limits::ConnectionLimits;

/// RFC 9266: the label of the tls-exporter channel binding.
pub const EXPORTER_LABEL: &[u8] = protocol::TLS_EXPORTER_LABEL;
/// How long a client may take over its TLS handshake, and to send a request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body once its headers are in: the largest
/// body any route takes (64 KiB) arrives within it even at 32 kbit/s, and a client that
/// trickles its body (to hold a connection and its buffer) is cut with 408.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(20);
/// No route takes a larger body; a larger one is refused (413) before it is held.
const MAX_BODY: usize = protocol::frame::MAX_FRAME;

/// The CRL published under a file name (`issuing-ca-N.crl`), DER.
pub type Crls = Arc<dyn Fn(&str) -> Option<Vec<u8>> + Send + Sync>;

/// Who is on the other end of one HTTPS connection.
#[derive(Clone)]
pub struct Caller {
    /// The device its client certificate names, if it presented one.
    pub peer: Option<Arc<DevicePeer>>,
    /// The connection's channel binding (RFC 9266 tls-exporter, 32 bytes).
    pub binding: [u8; 32],
}

/// The HTTPS listener's TLS configuration: the registrar's identity (the same as on QUIC), TLS
/// 1.3 and 1.2, client certificates asked for and checked by the QUIC listener's verifier.
pub fn server_config(
    identity: Arc<super::tls::RegistrarIdentity>,
    trust: Arc<crate::trust::TrustStore>,
    clock: crate::service::Clock,
) -> std::result::Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_details(
        super::tls::provider(),
        Arc::new(super::tls::ClockTime(clock)),
    )
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_client_cert_verifier(Arc::new(super::tls::DeviceCertVerifier::optional(trust)))
    .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    super::tls::no_resumption(&mut config);
    Ok(config)
}

/// Binds the listener.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::os(format!("binding HTTPS on {addr}"), e))
}

/// Every HTTPS route: EST, BRSKI, firmware (served within `chunks`, shared with QUIC), the
/// device API, labels and CRLs.
pub fn routes(
    service: Arc<Service>,
    sessions: Arc<crate::transport::sessions::Sessions>,
    crls: Crls,
    chunks: crate::transport::limits::ChunkTurns,
) -> axum::Router {
    est::router(service.clone())
        .merge(brski::router(service.clone()))
        .merge(firmware::router(service.clone(), chunks))
        .merge(device::router(service.clone(), sessions))
        .merge(label::router(service))
        .merge(
            axum::Router::new()
                .route("/crl/{file}", axum::routing::get(crl))
                .with_state(crls),
        )
        .layer(axum::middleware::from_fn(body_deadline))
}

/// Serves `router` ([`routes`]) on connections until `stopped` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: rustls::ServerConfig,
    service: Arc<Service>,
    router: axum::Router,
    limits: crate::transport::limits::Limits,
    mut stopped: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let connections = ConnectionLimits::new(limits);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!("HTTPS accept: {e}");
                    continue;
                }
            },
            _ = stopped.wait_for(|s| *s) => return,
        };
        let Some(slot) = connections.admit(remote.ip()) else {
            service.metrics().connection_refused();
            continue;
        };
        let (acceptor, service, router) = (acceptor.clone(), service.clone(), router.clone());
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                _ => {
                    service.metrics().handshake_refused();
                    return;
                }
            };
            let Some(caller) = caller(&service, tls.get_ref().1).await else {
                return;
            };
            let app = TowerToHyperService::new(router.layer(Extension(caller)));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), app);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("HTTPS connection from {remote}: {e}");
                    }
                }
                _ = stopped.wait_for(|s| *s) => connection.as_mut().graceful_shutdown(),
            }
            drop(slot);
        });
    }
}

/// Reads a request's body within [`BODY_TIMEOUT`] and [`MAX_BODY`] before the route sees it
/// (each route still applies its own, smaller, limit).
async fn body_deadline(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
            next.run(request).await
        }
        Ok(Err(_)) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a request body is at most {MAX_BODY} bytes\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {BODY_TIMEOUT:?}\n"),
        )
            .into_response(),
    }
}

async fn crl(
    axum::extract::State(crls): axum::extract::State<Crls>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    match crls(&file) {
        Some(der) => ([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no CRL {file}\n")).into_response(),
    }
}

/// Who the connection's client certificate names; `None` (the connection is dropped) when it
/// presented one that names no device.
async fn caller(service: &Service, conn: &rustls::ServerConnection) -> Option<Caller> {
    let mut binding = [0u8; 32];
    conn.export_keying_material(&mut binding, EXPORTER_LABEL, None)
        .ok()?;
    let chain: Option<Vec<Vec<u8>>> = conn
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.to_vec()).collect());
    let peer = match chain {
        None => None,
        Some(chain) => match service.identify(&chain) {
            Ok(peer) => Some(Arc::new(peer.over(Channel::Https))),
            Err(e) => {
                service.record_refusal(None, &e).await;
                return None;
            }
        },
    };
    Some(Caller { peer, binding })
}
