//! An EST client for the fleet simulator (`fleet --est`): each device opens its own TLS
//! connection (as a real EST client does), authenticates with its IDevID (enroll) or its new
//! LDevID (re-enroll), posts a base64 CSR and reads the base64 PKCS#7 answer. HTTP/1.1 is
//! written by hand: one request per connection, `Connection: close`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use certs::{KeyKind, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest answer read (a certificate in base64 PKCS#7 is a few KiB).
const MAX_ANSWER: usize = 64 * 1024;

/// Where the EST server is and what authenticates it.
#[derive(Clone)]
pub struct EstServer {
    /// Its address.
    pub addr: SocketAddr,
    /// The owner root (DER) its certificate chains to.
    pub owner_root: Vec<u8>,
}

/// A certificate and its key: what a client authenticates with, and what enrollment gives.
pub struct Credential {
    /// The certificate, DER.
    pub certificate: Vec<u8>,
    /// Its key.
    pub key: KeyPair,
}

impl EstServer {
    /// simpleenroll (with the IDevID) or simplereenroll (with the LDevID): a fresh key and the
    /// certificate issued for it.
    pub async fn enroll(
        &self,
        resource: &str,
        serial: &str,
        client: &Credential,
    ) -> Result<Credential> {
        let key = KeyPair::generate(KeyKind::P256)?;
        let csr = certs::csr::build_birth_csr(serial, &key)?;
        let body = base64::engine::general_purpose::STANDARD.encode(csr);
        let answer = self.post(resource, client, body.as_bytes()).await?;
        let compact: Vec<u8> = answer
            .into_iter()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let p7 = base64::engine::general_purpose::STANDARD.decode(compact)?;
        let certificate = certs::pkcs7::certificates(&p7)
            .map_err(|e| anyhow::anyhow!("PKCS#7: {e}"))?
            .into_iter()
            .next()
            .context("no certificate in the answer")?;
        Ok(Credential { certificate, key })
    }

    async fn post(&self, resource: &str, client: &Credential, body: &[u8]) -> Result<Vec<u8>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.owner_root.clone()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client.key.pkcs8_der().to_vec()));
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![CertificateDer::from(client.certificate.clone())], key)?;
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let head = format!(
            "POST /.well-known/est/{resource} HTTP/1.1\r\nHost: localhost\r\n\
             Content-Type: application/pkcs10\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(body).await?;
        tls.flush().await?;
        let mut answer = Vec::new();
        let read = (&mut tls)
            .take(MAX_ANSWER as u64)
            .read_to_end(&mut answer)
            .await;
        // A server that closes without close_notify still gave its whole answer.
        if let Err(e) = read
            && e.kind() != std::io::ErrorKind::UnexpectedEof
        {
            return Err(e.into());
        }
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no end of headers")?;
        let status = std::str::from_utf8(&answer[..split])?
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let body = answer[split + 4..].to_vec();
        if status != "200" {
            bail!("{status}: {}", String::from_utf8_lossy(&body).trim());
        }
        ensure!(!body.is_empty(), "an empty answer");
        Ok(body)
    }
}
