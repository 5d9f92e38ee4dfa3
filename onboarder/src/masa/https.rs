//! A manufacturer's MASA across the network (RFC 8995 5.5): the registrar signs a voucher
//! request carrying the pledge's own, posts it to the MASA named in the IDevID (or the
//! configured one) over HTTPS, and takes back a voucher only if the maker's voucher signer
//! signed it. The MASA's TLS certificate is checked against the maker's imported roots.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certs::brski::{self, RegistrarRequest, VOUCHER_CMS};
use certs::{CertInfo, KeyPair};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};

use super::{Masa, MasaFuture};
use crate::core::import::Anchor;
use crate::service::Clock;

/// How long the registrar waits for a MASA, connection and answer together.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer read from a MASA.
const MAX_ANSWER: usize = certs::cms::MAX_CMS;

/// The registrar's client of manufacturers' MASAs.
pub struct HttpsMasa {
    fallback_url: Option<String>,
    chain: Vec<Vec<u8>>,
    key: KeyPair,
    clock: Clock,
}

impl HttpsMasa {
    /// Signs requests with the registrar's `key` and certificate `chain` (leaf first, up to
    /// the owner root the MASA will pin); asks `fallback_url` for devices whose IDevID names no
    /// MASA.
    pub fn new(
        fallback_url: Option<String>,
        chain: Vec<Vec<u8>>,
        key: KeyPair,
        clock: Clock,
    ) -> HttpsMasa {
        HttpsMasa {
            fallback_url,
            chain,
            key,
            clock,
        }
    }

    async fn ask(
        &self,
        anchors: &[Anchor],
        idevid: &[u8],
        signed_request: &[u8],
        owner_ca: &[u8],
    ) -> Result<Vec<u8>, String> {
        let info = CertInfo::parse(idevid).map_err(|e| e.to_string())?;
        let url = info
            .masa_url
            .clone()
            .or_else(|| self.fallback_url.clone())
            .ok_or("the IDevID names no MASA and no MASA URL is configured")?;
        let masa_keys: Vec<_> = anchors
            .iter()
            .filter_map(|a| a.masa.as_deref())
            .filter_map(|der| CertInfo::parse(der).ok())
            .map(|i| i.public_key)
            .collect();
        if masa_keys.is_empty() {
            return Err(
                "the maker's voucher signer was not imported (anchor import --masa), so its \
                 vouchers cannot be checked"
                    .into(),
            );
        }
        let pledge = brski::open_request(signed_request, &info.public_key)
            .map_err(|e| format!("the pledge's request: {e}"))?;
        let now = (self.clock)();
        let (leaf, rest) = self.chain.split_first().ok_or("no registrar certificate")?;
        // The owner root goes along for the MASA to pin; the IDevID for a request that does
        // not carry it (COSE).
        let mut carried: Vec<&[u8]> = rest.iter().map(Vec::as_slice).collect();
        carried.push(owner_ca);
        carried.push(idevid);
        let request = brski::sign_registrar_request(
            &RegistrarRequest {
                created_on: now,
                serial_number: pledge.serial_number,
                nonce: pledge.nonce,
                prior_signed_voucher_request: signed_request.to_vec(),
            },
            &self.key,
            leaf,
            &carried,
            now,
        )
        .map_err(|e| e.to_string())?;
        let roots: Vec<&[u8]> = anchors.iter().map(|a| a.der.as_slice()).collect();
        let answer = tokio::time::timeout(TIMEOUT, post(&url, request, &roots))
            .await
            .map_err(|_| format!("{url} did not answer within {TIMEOUT:?}"))??;
        if masa_keys
            .iter()
            .any(|k| brski::open_voucher(&answer, k).is_ok())
        {
            Ok(answer)
        } else {
            Err(format!(
                "{url} answered with a voucher the maker's voucher signer did not sign"
            ))
        }
    }
}

impl Masa for HttpsMasa {
    fn voucher<'a>(
        &'a self,
        anchors: &'a [Anchor],
        idevid: &'a [u8],
        signed_request: &'a [u8],
        owner_ca: &'a [u8],
    ) -> MasaFuture<'a> {
        Box::pin(self.ask(anchors, idevid, signed_request, owner_ca))
    }
}

/// Posts a registrar voucher request to `base`'s requestvoucher, trusting `roots` for its
/// TLS certificate; the answer's body.
async fn post(base: &str, body: Vec<u8>, roots: &[&[u8]]) -> Result<Vec<u8>, String> {
    let base = if base.contains("://") {
        base.to_string()
    } else {
        // RFC 8995 2.3.2: a MASA URL without a scheme is https.
        format!("https://{base}")
    };
    let url = format!(
        "{}/.well-known/brski/requestvoucher",
        base.trim_end_matches('/')
    );
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url}: a MASA is asked over https only"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(CertificateDer::from(root.to_vec()))
            .map_err(|e| format!("the maker's root: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::transport::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(store)
        .with_no_client_auth();
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{url}: TLS: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(connection);
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or(host);
    let request = hyper::Request::post(uri.path())
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, VOUCHER_CMS)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("{url}: reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let why = String::from_utf8_lossy(&body[..body.len().min(300)])
            .trim()
            .to_string();
        return Err(format!("{url} refused ({status}): {why}"));
    }
    Ok(body.to_vec())
}
