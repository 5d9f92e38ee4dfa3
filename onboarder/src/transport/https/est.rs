//! EST (RFC 7030, with the corrections of RFC 8951) under `/.well-known/est/`:
//!
//! - `GET cacerts`: the owner's CA certificates (issuing CA, root) as base64 PKCS#7 certs-only;
//!   for anyone. During an owner-root rollover, both roots and the cross-certificates between
//!   them (RFC 7030 4.1.3's OldWithOld, NewWithNew, OldWithNew, NewWithOld), by which a client
//!   that trusts the old root authenticates the new one.
//! - `GET csrattrs`: what our policy wants in a CSR: the challengePassword carrying the channel
//!   binding, a P-256 key, ECDSA with SHA-256.
//! - `POST simpleenroll`: a base64 PKCS#10 CSR from a device authenticated by its IDevID;
//!   answers its LDevID as base64 PKCS#7 certs-only. The device must be expected (the owner
//!   imported a voucher for it, still good), or have accepted its voucher.
//! - `POST simplereenroll`: the same with the device's current LDevID, for a fresh key.
//! - `POST serverkeygen` (RFC 7030 4.4): for a device that cannot make a key. The server makes
//!   a P-256 key, enrolls it exactly as `simpleenroll` would (the core checks a CSR we sign with
//!   it for the device the client certificate names, bound to the connection), and answers
//!   `multipart/mixed`: the key as base64 PKCS#8, then the certificate. The key is never
//!   stored or logged; TLS protects it on the way.
//!
//! Bodies are base64 whatever `Content-Transfer-Encoding` says (RFC 8951 3: receivers ignore
//! it); answers carry `Content-Transfer-Encoding: base64` for older clients. Bodies over
//! [`MAX_BODY`] are refused with 413, bodies that are not base64 with 400, other media types
//! with 415. Refusals of the core come back with their wire code and message.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use protocol::message::{Request, Response as Answer};

use super::Caller;
use super::answer::{self, Refusal, device, media_type_is, not_expected, refusal, rejected};
use crate::core::DevicePeer;
use crate::service::Service;

/// Largest request body: a base64 CSR is a few KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// The EST routes.
pub fn router(service: Arc<Service>) -> Router {
    answer::limited(
        Router::new()
            .route("/.well-known/est/cacerts", get(cacerts))
            .route("/.well-known/est/csrattrs", get(csrattrs))
            .route("/.well-known/est/simpleenroll", post(simpleenroll))
            .route("/.well-known/est/simplereenroll", post(simplereenroll))
            .route("/.well-known/est/serverkeygen", post(serverkeygen)),
        &service,
        MAX_BODY,
    )
    .with_state(service)
}

async fn cacerts(State(service): State<Arc<Service>>) -> Response {
    pkcs7(&certs::pkcs7::certs_only(
        &service.registrar().ca_certificates(),
    ))
}

async fn csrattrs() -> Response {
    base64_body("application/csrattrs", &certs::der::est_csr_attributes())
}

async fn simpleenroll(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    enroll(&service, &caller, &headers, &body, Request::enroll).await
}

async fn simplereenroll(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    enroll(&service, &caller, &headers, &body, |csr| {
        Request::Reenroll { csr }
    })
    .await
}

async fn serverkeygen(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (peer, csr) = match authenticated_csr(&service, &caller, &headers, &body) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    // The client's CSR says what it asks for; its key is not the one it gets.
    if let Err(e) = certs::csr::parse_csr(&csr) {
        return rejected(&service, StatusCode::BAD_REQUEST, &e.to_string()).into_response();
    }
    let made = certs::KeyPair::generate(certs::KeyKind::P256).and_then(|key| {
        certs::csr::build_csr(&peer.id.serial, &key, &caller.binding).map(|csr| (key, csr))
    });
    let (key, csr) = match made {
        Ok(made) => made,
        Err(e) => {
            return refusal(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()).into_response();
        }
    };
    match enrolled(&service, peer, &caller, Request::enroll(csr)).await {
        Ok(certificate) => multipart(&[
            ("application/pkcs8", key.pkcs8_der()),
            (
                "application/pkcs7-mime; smime-type=certs-only",
                &certs::pkcs7::certs_only(&[&certificate]),
            ),
        ]),
        Err(refused) => refused.into_response(),
    }
}

/// Both enrollments: authenticate, decode, ask the service, encode.
async fn enroll(
    service: &Service,
    caller: &Caller,
    headers: &HeaderMap,
    body: &[u8],
    request: impl FnOnce(Vec<u8>) -> Request,
) -> Response {
    let (peer, csr) = match authenticated_csr(service, caller, headers, body) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    match enrolled(service, peer, caller, request(csr)).await {
        Ok(certificate) => pkcs7(&certs::pkcs7::certs_only(&[&certificate])),
        Err(refused) => refused.into_response(),
    }
}

/// The device the client certificate names and the CSR in the body, or the refusal.
fn authenticated_csr<'a>(
    service: &Service,
    caller: &'a Caller,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(&'a DevicePeer, Vec<u8>), Refusal> {
    let peer = device(service, caller)?;
    if !media_type_is(headers, "application/pkcs10") {
        return Err(rejected(
            service,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be application/pkcs10 (a base64 PKCS#10 CSR)",
        ));
    }
    let csr =
        decode_base64(body).map_err(|why| rejected(service, StatusCode::BAD_REQUEST, &why))?;
    Ok((peer, csr))
}

/// The certificate the service issued for `request`, or its refusal as HTTP.
async fn enrolled(
    service: &Service,
    peer: &DevicePeer,
    caller: &Caller,
    request: Request,
) -> Result<Vec<u8>, Refusal> {
    match service
        .handle(peer, &caller.binding, request, "https")
        .await
        .response
    {
        Answer::Enrolled(enrollment) => Ok(enrollment.certificate),
        other => Err(not_expected(other)),
    }
}

/// Base64 with line breaks and other white space anywhere, as EST clients send it.
pub(crate) fn decode_base64(body: &[u8]) -> Result<Vec<u8>, String> {
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err("the body is empty; a base64 PKCS#10 CSR was expected".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|e| format!("the body is not base64: {e}"))
}

/// A `multipart/mixed` body of base64 parts (RFC 7030 4.4.2).
fn multipart(parts: &[(&str, &[u8])]) -> Response {
    const BOUNDARY: &str = "est-serverkeygen-boundary";
    let mut body = String::new();
    for (content_type, der) in parts {
        body.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        ));
        body.push_str(&lines(der));
        // The line break before a boundary belongs to the boundary (RFC 2046 5.1.1).
        body.push_str("\r\n");
    }
    body.push_str(&format!("--{BOUNDARY}--\r\n"));
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("multipart/mixed; boundary=est-serverkeygen-boundary"),
    );
    response
}

fn pkcs7(der: &[u8]) -> Response {
    base64_body("application/pkcs7-mime; smime-type=certs-only", der)
}

/// Base64, 64 characters a line as PEM and libest write it (LF: `base64 -d` refuses CR).
fn lines(der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut body = String::with_capacity(text.len() + text.len() / 32 + 2);
    for line in text.as_bytes().chunks(64) {
        body.push_str(&String::from_utf8_lossy(line));
        body.push('\n');
    }
    body
}

/// A base64 body.
fn base64_body(content_type: &'static str, der: &[u8]) -> Response {
    let mut response = lines(der).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        "content-transfer-encoding",
        HeaderValue::from_static("base64"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_read_across_lines_and_refused_when_broken() {
        assert_eq!(decode_base64(b"AQID\r\nBA==\n").unwrap(), [1, 2, 3, 4]);
        assert!(decode_base64(b"not base64!").is_err());
        assert!(decode_base64(b" \n").is_err());
    }
}
