//! Firmware images over HTTPS (`GET /firmware/{sha256 hex}`), for a device that downloads with
//! a plain HTTP client: authorised by its LDevID exactly as a QUIC chunk request is (the image
//! must be the one offered to it), read through the same service call, 128 KiB at a time. A
//! URL signed for the device (`?device=MAKER/SERIAL&expires=T&sig=HMAC`, offered by a campaign
//! with `signed_urls`) authorises a client without a certificate until it expires, for as
//! long as the device's update is in progress; a bad or late signature is refused (403).
//!
//! A `Range: bytes=START-[END]` request gets `206 Partial Content` with at most one chunk
//! (`Content-Range: bytes START-LAST/*`, the whole length left to the signed manifest), so a
//! download resumes where it stopped; without a range the whole image streams as `200`. The
//! image is trusted for its signed manifest, not for the transport.
//!
//! A streamed image reads its next chunk only when hyper asks for it (its send buffer has
//! room), and each read waits for one of the server-wide [`ChunkTurns`] it shares with QUIC:
//! a thousand downloads at once hold a few chunks each in hyper's buffers and at most
//! [`CHUNKS_IN_FLIGHT`](crate::transport::limits::CHUNKS_IN_FLIGHT) more being read, where a
//! chunk read ahead per download would hold and churn far more.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use protocol::message::{MAX_CHUNK, Request, Response as Answer};

use super::Caller;
use super::answer::{device, not_expected, refusal, rejected, status_of};
use crate::core::DevicePeer;
use crate::service::{Service, SignedUrl};
use crate::transport::limits::ChunkTurns;

/// What the route shares.
#[derive(Clone)]
struct Firmware {
    service: Arc<Service>,
    turns: ChunkTurns,
}

/// The firmware route; chunks are served within `turns`.
pub fn router(service: Arc<Service>, turns: ChunkTurns) -> Router {
    Router::new()
        .route("/firmware/{digest}", get(image))
        .with_state(Firmware { service, turns })
}

/// The query of a signed URL.
#[derive(Debug, Default, serde::Deserialize)]
struct Signature {
    device: Option<String>,
    expires: Option<u64>,
    sig: Option<String>,
}

/// Who downloads: the device its certificate names, or the one a signed URL was made for.
enum Downloader {
    Device(DevicePeer),
    Signed(SignedUrl),
}

async fn image(
    State(Firmware { service, turns }): State<Firmware>,
    Extension(caller): Extension<Caller>,
    Path(digest): Path<String>,
    Query(signature): Query<Signature>,
    headers: HeaderMap,
) -> Response {
    let who = match (&caller.peer, signature) {
        (
            None,
            Signature {
                device: Some(device),
                expires: Some(expires),
                sig: Some(sig),
            },
        ) => {
            let (Ok(device), Some(sig)) = (device.parse(), certs::inspect::unhex(&sig)) else {
                return rejected(&service, StatusCode::BAD_REQUEST, "a malformed signed URL")
                    .into_response();
            };
            Downloader::Signed(SignedUrl {
                device,
                expires,
                sig,
            })
        }
        _ => match device(&service, &caller) {
            Ok(peer) => Downloader::Device(peer.clone()),
            Err(refused) => return refused.into_response(),
        },
    };
    let Some(digest) = certs::inspect::unhex(&digest).filter(|d| d.len() == 32) else {
        return rejected(&service, StatusCode::BAD_REQUEST, "not a SHA-256 in hex").into_response();
    };
    let range = match headers.get(header::RANGE).map(parse_range) {
        None => None,
        Some(Some(range)) => Some(range),
        Some(None) => {
            return refusal(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "one range, bytes=START- or bytes=START-END",
            )
            .into_response();
        }
    };
    let (start, wanted) = match range {
        Some((start, end)) => (start, end.map_or(MAX_CHUNK, |end| chunk_len(start, end))),
        None => (0, MAX_CHUNK),
    };
    let download = Download {
        service,
        turns,
        who,
        caller,
        digest,
    };
    let first = match download.chunk(start, wanted).await {
        Ok(bytes) => bytes,
        Err(refused) => return refused,
    };
    if range.is_some() {
        if first.is_empty() {
            return refusal(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "past the end of the image",
            )
            .into_response();
        }
        let last = start + first.len() as u64 - 1;
        let mut response = (StatusCode::PARTIAL_CONTENT, first).into_response();
        if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{last}/*")) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        return response;
    }
    // The whole image: the first chunk, then each next one when hyper asks for it.
    let next = first.len() as u64;
    let more = first.len() == MAX_CHUNK as usize;
    let rest = futures_util::stream::unfold(
        (download, next, more),
        |(download, offset, more)| async move {
            if !more {
                return None;
            }
            match download.chunk(offset, MAX_CHUNK).await {
                Ok(bytes) if bytes.is_empty() => None,
                Ok(bytes) => {
                    let next = offset + bytes.len() as u64;
                    let more = bytes.len() == MAX_CHUNK as usize;
                    Some((Ok(bytes), (download, next, more)))
                }
                Err(_) => Some((
                    Err(std::io::Error::other("refused mid-image")),
                    (download, offset, false),
                )),
            }
        },
    );
    let body = futures_util::stream::once(std::future::ready(Ok(first))).chain(rest);
    let mut response = Body::from_stream(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// One download: who asks for which image.
struct Download {
    service: Arc<Service>,
    turns: ChunkTurns,
    who: Downloader,
    caller: Caller,
    digest: Vec<u8>,
}

impl Download {
    /// One chunk through the service, within a server-wide turn; the service authorises it as
    /// for a QUIC request (or for the signed URL).
    async fn chunk(&self, offset: u64, length: u32) -> Result<Vec<u8>, Response> {
        let _turn = self.turns.take().await;
        let peer = match &self.who {
            Downloader::Device(peer) => peer,
            Downloader::Signed(signed) => {
                return self
                    .service
                    .signed_chunk(signed, &self.digest, offset, length)
                    .await
                    .map_err(|e| refusal(status_of(e.code()), &e.to_string()).into_response());
            }
        };
        let request = Request::FirmwareChunk {
            digest: self.digest.clone(),
            offset,
            length,
        };
        match self
            .service
            .handle(peer, &self.caller.binding, request, "https")
            .await
            .response
        {
            Answer::Chunk(bytes) => Ok(bytes),
            other => Err(not_expected(other).into_response()),
        }
    }
}

/// Bytes `start..=end`, at most one chunk.
fn chunk_len(start: u64, end: u64) -> u32 {
    u32::try_from(end.saturating_sub(start).saturating_add(1))
        .unwrap_or(MAX_CHUNK)
        .min(MAX_CHUNK)
}

/// `bytes=START-` or `bytes=START-END` (END >= START); anything else is `None`.
fn parse_range(value: &HeaderValue) -> Option<(u64, Option<u64>)> {
    let spec = value.to_str().ok()?.trim().strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => None,
        end => Some(end.parse::<u64>().ok().filter(|e| *e >= start)?),
    };
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_or_refused() {
        let r = |s: &'static str| parse_range(&HeaderValue::from_static(s));
        assert_eq!(r("bytes=0-"), Some((0, None)));
        assert_eq!(r("bytes=10-19"), Some((10, Some(19))));
        assert_eq!(r("bytes=19-10"), None);
        assert_eq!(r("bytes=-5"), None);
        assert_eq!(r("bytes=0-1,5-6"), None);
        assert_eq!(r("items=0-1"), None);
        assert_eq!(chunk_len(10, 19), 10);
        assert_eq!(chunk_len(0, u64::MAX), MAX_CHUNK);
    }
}
