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

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use protocol::message::{MAX_CHUNK, Request, Response as Answer};

use super::Caller;
use super::answer::{device, not_expected, refusal, rejected, status_of};
use crate::core::DevicePeer;
use crate::service::{Service, SignedUrl};

/// The firmware route.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/firmware/{digest}", get(image))
        .with_state(service)
}

/// The query of a signed URL.
#[derive(Debug, Default, serde::Deserialize)]
struct Signature {
    device: Option<String>,
    expires: Option<u64>,
    sig: Option<String>,
}

/// Who downloads: the device its certificate names, or the one a signed URL was made for.
#[derive(Clone)]
enum Downloader {
    Device(DevicePeer),
    Signed(SignedUrl),
}

async fn image(
    State(service): State<Arc<Service>>,
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
    let first = match chunk(&service, &who, &caller, &digest, start, wanted).await {
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
    // The whole image: the first chunk, then the rest as the client takes it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    tokio::spawn(async move {
        let mut offset = first.len() as u64;
        let mut more = first.len() == MAX_CHUNK as usize;
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        while more {
            let next = chunk(&service, &who, &caller, &digest, offset, MAX_CHUNK).await;
            let Ok(bytes) = next else {
                let _ = tx
                    .send(Err(std::io::Error::other("refused mid-image")))
                    .await;
                return;
            };
            offset += bytes.len() as u64;
            more = bytes.len() == MAX_CHUNK as usize;
            if bytes.is_empty() || tx.send(Ok(bytes)).await.is_err() {
                return;
            }
        }
    });
    let mut response = Body::from_stream(Chunks(rx)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// One chunk through the service, which authorises it as for a QUIC request (or for the
/// signed URL).
async fn chunk(
    service: &Service,
    who: &Downloader,
    caller: &Caller,
    digest: &[u8],
    offset: u64,
    length: u32,
) -> Result<Vec<u8>, Response> {
    let peer = match who {
        Downloader::Device(peer) => peer,
        Downloader::Signed(signed) => {
            return service
                .signed_chunk(signed, digest, offset, length)
                .await
                .map_err(|e| refusal(status_of(e.code()), &e.to_string()).into_response());
        }
    };
    let request = Request::FirmwareChunk {
        digest: digest.to_vec(),
        offset,
        length,
    };
    match service
        .handle(peer, &caller.binding, request, "https")
        .await
        .response
    {
        Answer::Chunk(bytes) => Ok(bytes),
        other => Err(not_expected(other).into_response()),
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

/// The chunks of a streamed image, as the body's stream.
struct Chunks(tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>);

impl futures_core::Stream for Chunks {
    type Item = Result<Vec<u8>, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
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
