//! Firmware images over HTTPS (RFC 9110): a `GET` of the URL an offer carries, from a byte
//! offset with `Range` so a download resumes, on one kept-alive connection with the device's
//! LDevID as client certificate and the pinned owner CA as the only trust anchor. The signed
//! manifest, checked before and after, makes the image trustworthy; HTTPS only carries it.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper::client::conn::http1::SendRequest;
use hyper::header;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

use crate::error::AgentError;

fn err(url: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Connection(format!("{url}: {e}"))
}

/// A connection to the server of an image's URL.
pub struct ImageSource {
    url: String,
    path: String,
    authority: String,
    sender: SendRequest<Empty<Bytes>>,
}

impl ImageSource {
    /// Connects to the host of `url` (https only) with `tls` (its ALPN is set here).
    pub async fn open(url: &str, tls: rustls::ClientConfig) -> Result<ImageSource, AgentError> {
        let uri: hyper::Uri = url.parse().map_err(|e| err(url, e))?;
        if uri.scheme_str() != Some("https") {
            return Err(err(url, "an image is downloaded over https only"));
        }
        let host = uri
            .host()
            .ok_or_else(|| err(url, "no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let mut tls = tls;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(host.clone()).map_err(|e| err(url, e))?;
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| err(url, e))?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| err(url, format!("TLS: {e}")))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| err(url, e))?;
        tokio::spawn(connection);
        Ok(ImageSource {
            url: url.to_string(),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            authority: uri
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or(host),
            sender,
        })
    }

    /// The image from byte `from` on: the body, and how many leading bytes of it to skip (a
    /// server that ignores `Range` sends the whole image again).
    pub async fn get(&mut self, from: u64) -> Result<(hyper::body::Incoming, u64), AgentError> {
        let mut request =
            hyper::Request::get(self.path.as_str()).header(header::HOST, self.authority.as_str());
        if from > 0 {
            request = request.header(header::RANGE, format!("bytes={from}-"));
        }
        let request = request.body(Empty::new()).map_err(|e| err(&self.url, e))?;
        self.sender.ready().await.map_err(|e| err(&self.url, e))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| err(&self.url, e))?;
        let status = response.status();
        let skip = match status {
            StatusCode::PARTIAL_CONTENT => 0,
            StatusCode::OK => from,
            _ => {
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let why = String::from_utf8_lossy(&body[..body.len().min(200)])
                    .trim()
                    .to_string();
                return Err(err(&self.url, format!("{status}: {why}")));
            }
        };
        Ok((response.into_body(), skip))
    }
}
