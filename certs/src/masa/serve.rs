//! The MASA on HTTPS (RFC 8995 5.5, 5.8): `POST /.well-known/brski/requestvoucher` and
//! `POST /.well-known/brski/requestauditlog`, each taking a registrar's CMS-signed request
//! (`application/voucher-cms+json`, binary DER). The registrar is authenticated by the
//! signature of its request, not by a TLS client certificate; the MASA's TLS certificate is
//! issued by the manufacturer's root, which registrars already trust for IDevIDs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use super::{MasaError, MasaService};
use crate::brski::VOUCHER_CMS;
use crate::cms::MAX_CMS;
use crate::key::KeyPair;

/// How long a client may take over its TLS handshake and request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The MASA's TLS configuration: `chain` (leaf first) and its `key`, TLS 1.3 and 1.2, no
/// client certificates.
pub fn tls_config(chain: &[Vec<u8>], key: &KeyPair) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = chain
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(c.clone()))
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.pkcs8_der().to_vec().into());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The MASA's routes.
pub fn router(masa: Arc<MasaService>) -> Router {
    Router::new()
        .route("/.well-known/brski/requestvoucher", post(requestvoucher))
        .route("/.well-known/brski/requestauditlog", post(requestauditlog))
        .layer(DefaultBodyLimit::max(MAX_CMS))
        .layer(axum::middleware::from_fn(announced_size))
        .with_state(masa)
}

/// Refuses (413) a body announced longer than [`MAX_CMS`] before reading any of it, so the
/// client hears the verdict rather than a reset while it still sends.
async fn announced_size(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_CMS as u64) {
        let why = format!("the body is larger than {MAX_CMS} bytes");
        return refused(StatusCode::PAYLOAD_TOO_LARGE, &why);
    }
    next.run(request).await
}

fn refused(status: StatusCode, why: &str) -> Response {
    (status, format!("{why}\n")).into_response()
}

fn answer(
    headers: &HeaderMap,
    media: &'static str,
    result: impl FnOnce() -> Result<Vec<u8>, MasaError>,
) -> Response {
    let is_cms = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(VOUCHER_CMS));
    if !is_cms {
        let why = format!("the body must be {VOUCHER_CMS}");
        return refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, &why);
    }
    match result() {
        Ok(body) => ([(header::CONTENT_TYPE, media)], body).into_response(),
        Err(e) => {
            tracing::info!("refused: {e}");
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            refused(status, &e.to_string())
        }
    }
}

async fn requestvoucher(
    State(masa): State<Arc<MasaService>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The voucher is in the encoding of the pledge's own request.
    let media = match crate::brski::open_registrar_request(&body) {
        Ok(r) => {
            crate::brski::Encoding::of(&r.request.prior_signed_voucher_request).voucher_media_type()
        }
        Err(_) => VOUCHER_CMS,
    };
    answer(&headers, media, || {
        masa.request_voucher(&body, crate::unix_now())
    })
}

async fn requestauditlog(
    State(masa): State<Arc<MasaService>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(&headers, "application/json", || {
        masa.audit_log(&body, crate::unix_now())
    })
}

/// Binds `addr` and serves the MASA until `stopped` turns true; returns the bound address
/// once listening (through `ready`).
pub async fn serve(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    masa: Arc<MasaService>,
    ready: tokio::sync::oneshot::Sender<SocketAddr>,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let _ = ready.send(listener.local_addr()?);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let app = router(masa);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!("accept: {e}");
                    continue;
                }
            },
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
            if let Err(e) = connection.await {
                tracing::debug!("connection from {remote}: {e}");
            }
        });
    }
}
