//! The agent over HTTPS: firmware images (RFC 9110) from the URL an offer carries, from a byte
//! offset with `Range` so a download resumes, with the device's LDevID as client certificate
//! and the pinned owner CA as the only trust anchor (the signed manifest, checked before and
//! after, makes the image trustworthy; HTTPS only carries it); and [`HttpsSession`], our whole
//! protocol over HTTPS for networks that block UDP.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::client::conn::http1::SendRequest;
use hyper::header;
use hyper_util::rt::TokioIo;
use protocol::DecodeError;
use protocol::message::{self, Command, CommandReply, Request, Response};
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
    sender: SendRequest<Full<Bytes>>,
}

impl ImageSource {
    /// Connects to the host of `url` (https only) with `tls` (its ALPN is set here).
    pub async fn open(url: &str, tls: rustls::ClientConfig) -> Result<ImageSource, AgentError> {
        let uri: hyper::Uri = url.parse().map_err(|e| err(url, e))?;
        let (sender, _, _) = dial(url, &tls, None).await?;
        Ok(ImageSource {
            url: url.to_string(),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            authority: uri
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or_default(),
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
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| err(&self.url, e))?;
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

/// Connects to `url`'s host with `tls` (ALPN set here), checking the server's certificate
/// against `server_name` when given (else the URL's host): the request sender, the TLS
/// exporter value of the connection (RFC 9266, as the server computes it), and the server's
/// chain. A certificate alert in the handshake is the refusal it says.
async fn dial(
    url: &str,
    tls: &rustls::ClientConfig,
    server_name: Option<&str>,
) -> Result<
    (
        SendRequest<Full<Bytes>>,
        [u8; protocol::EXPORTER_LEN],
        Vec<Vec<u8>>,
    ),
    AgentError,
> {
    let uri: hyper::Uri = url.parse().map_err(|e| err(url, e))?;
    if uri.scheme_str() != Some("https") {
        return Err(err(url, "the onboarder is reached over https only"));
    }
    let host = uri
        .host()
        .ok_or_else(|| err(url, "no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name =
        ServerName::try_from(server_name.unwrap_or(&host).to_string()).map_err(|e| err(url, e))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| err(url, e))?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| handshake_error(url, e))?;
    let connection = stream.get_ref().1;
    let mut binding = [0u8; protocol::EXPORTER_LEN];
    connection
        .export_keying_material(&mut binding, protocol::TLS_EXPORTER_LABEL, None)
        .map_err(|e| err(url, format!("TLS exporter: {e}")))?;
    let chain = connection
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
        .unwrap_or_default();
    let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| err(url, e))?;
    tokio::spawn(driver);
    Ok((sender, binding, chain))
}

/// A failed handshake: the refusal of a certificate alert, or connection trouble.
fn handshake_error(url: &str, e: std::io::Error) -> AgentError {
    let alert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::AlertReceived(alert) => Some(u8::from(*alert)),
            _ => None,
        });
    match alert.and_then(super::quic::certificate_alert) {
        Some(reason) => AgentError::CredentialRefused {
            reason,
            detail: e.to_string(),
        },
        None => err(url, format!("TLS: {e}")),
    }
}

/// POSTs `body` (CBOR) to `path` on `sender`; the answer's status and body.
async fn post(
    sender: &mut SendRequest<Full<Bytes>>,
    url: &str,
    authority: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), AgentError> {
    let request = hyper::Request::post(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/cbor")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| err(url, e))?;
    sender.ready().await.map_err(|e| err(url, e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| err(url, e))?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), protocol::message::MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| err(url, e))?
        .to_bytes();
    Ok((status, body))
}

/// Our protocol over HTTPS (the onboarder's `/.well-known/onboarder/`), for networks that block
/// UDP: requests on one kept-alive connection (whose exporter value binds them, as a QUIC
/// session's does), commands asked for and answered on a second one. A connection the server
/// closed while it was idle is dialled again once before the session counts as lost (the
/// binding is then the new connection's).
pub struct HttpsSession {
    url: String,
    authority: String,
    tls: rustls::ClientConfig,
    server_name: Option<String>,
    requests: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
    commands: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
    binding: std::sync::Mutex<[u8; protocol::EXPORTER_LEN]>,
    chain: Vec<Vec<u8>>,
    closed: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for HttpsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsSession")
            .field("url", &self.url)
            .finish()
    }
}

const REQUEST: &str = "/.well-known/onboarder/request";
const COMMANDS: &str = "/.well-known/onboarder/commands";
const REPLY: &str = "/.well-known/onboarder/reply";

type Slot = tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>;

impl HttpsSession {
    /// Connects to the onboarder's HTTPS listener at `url` (`https://HOST:PORT`) with `tls`.
    pub async fn connect(
        url: &str,
        tls: rustls::ClientConfig,
        server_name: Option<&str>,
    ) -> Result<HttpsSession, AgentError> {
        let url = url.trim_end_matches('/').to_string();
        let (sender, binding, chain) = dial(&url, &tls, server_name).await?;
        let authority = url
            .parse::<hyper::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().to_string()))
            .unwrap_or_default();
        Ok(HttpsSession {
            url,
            authority,
            tls,
            server_name: server_name.map(str::to_string),
            requests: tokio::sync::Mutex::new(Some(sender)),
            commands: tokio::sync::Mutex::new(None),
            binding: std::sync::Mutex::new(binding),
            chain,
            closed: tokio::sync::watch::channel(false).0,
        })
    }

    /// The certificate chain the server presented (leaf first), DER.
    pub fn server_chain(&self) -> Vec<Vec<u8>> {
        self.chain.clone()
    }

    /// The TLS exporter value that binds requests to this session's request connection.
    pub fn binding(&self) -> [u8; protocol::EXPORTER_LEN] {
        *self.binding.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// POSTs on the connection in `slot`, dialling it (again) when there is none or the
    /// server closed it; the session is lost when that fails too.
    async fn send(
        &self,
        slot: &Slot,
        path: &str,
        body: Vec<u8>,
        binds: bool,
    ) -> Result<(StatusCode, Bytes), AgentError> {
        let mut sender = slot.lock().await;
        for attempt in 0..2 {
            if sender.is_none() {
                let dialled = dial(&self.url, &self.tls, self.server_name.as_deref()).await;
                let (fresh, binding, _) = dialled.inspect_err(|_| {
                    let _ = self.closed.send(true);
                })?;
                if binds {
                    *self.binding.lock().unwrap_or_else(|e| e.into_inner()) = binding;
                }
                *sender = Some(fresh);
            }
            let Some(s) = sender.as_mut() else { continue };
            match post(s, &self.url, &self.authority, path, body.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(e) if attempt == 0 => {
                    tracing::debug!("{}: {e}; dialling again", self.url);
                    *sender = None;
                }
                Err(e) => {
                    let _ = self.closed.send(true);
                    return Err(e);
                }
            }
        }
        Err(err(&self.url, "the connection could not be made again"))
    }

    /// Sends a request and returns the server's response, whatever it is.
    pub async fn exchange(&self, request: &Request) -> Result<Response, AgentError> {
        let (status, bytes) = self
            .send(&self.requests, REQUEST, message::encode(request), true)
            .await?;
        if status != StatusCode::OK {
            let why = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_string();
            return Err(AgentError::Protocol(format!("{status}: {}", why.trim())));
        }
        Ok(message::decode(&bytes, message::MAX_RESPONSE)?)
    }

    /// Waits for the next command (asking the server again whenever it answers that there is
    /// none); `None` once the session is lost.
    pub async fn next_command(&self) -> Option<Result<Result<Command, DecodeError>, AgentError>> {
        loop {
            if *self.closed.borrow() {
                return None;
            }
            match self.send(&self.commands, COMMANDS, Vec::new(), false).await {
                Ok((StatusCode::OK, bytes)) => {
                    return Some(Ok(message::decode::<Command>(
                        &bytes,
                        message::MAX_RESPONSE,
                    )));
                }
                Ok((StatusCode::NO_CONTENT, _)) => continue,
                Ok((status, _)) => {
                    tracing::debug!("{}: asking for commands: {status}", self.url);
                    let _ = self.closed.send(true);
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Answers the command last handed out (on the connection it came on).
    pub async fn reply(&self, reply: &CommandReply) -> Result<(), AgentError> {
        let (status, bytes) = self
            .send(&self.commands, REPLY, message::encode(reply), false)
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            let why = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_string();
            Err(AgentError::Protocol(format!("{status}: {}", why.trim())))
        }
    }

    /// Ends the session.
    pub fn close(&self) {
        let _ = self.closed.send(true);
    }

    /// Resolves when the session is lost or closed.
    pub async fn closed(&self) -> String {
        let mut closed = self.closed.subscribe();
        let _ = closed.wait_for(|c| *c).await;
        "the HTTPS session ended".into()
    }
}
