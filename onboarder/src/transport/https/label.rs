//! Live labels, for anyone (no certificate, no token): `/label/{token}` (a page for people),
//! `/label/{token}/json`, `/label/{token}/qr.svg` and `/label/{token}/qr.png` (the code to
//! print on the housing, pointing to the page), `/label/{token}/sbom` (the SBOM of the firmware
//! the device runs). A token names its device and carries a MAC, so an unknown or altered one
//! is a plain 404 that says nothing of which devices exist.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};

use crate::core::DeviceId;
use crate::core::label::Label;
use crate::core::support::SupportStatus;
use crate::service::Service;

/// The label routes.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/label/{token}", get(page))
        .route("/label/{token}/json", get(json))
        .route("/label/{token}/qr.svg", get(qr_svg))
        .route("/label/{token}/qr.png", get(qr_png))
        .route("/label/{token}/sbom", get(sbom))
        .with_state(service)
}

/// Labels change as the device does: caches may keep one a minute.
const CACHE: &str = "public, max-age=60";

/// A refusal: its status and a body that names nothing.
type Refusal = (StatusCode, &'static str);

const NOT_FOUND: Refusal = (StatusCode::NOT_FOUND, "no such label\n");

fn not_found() -> Response {
    NOT_FOUND.into_response()
}

fn device(service: &Service, token: &str) -> Option<DeviceId> {
    service.label_device(token)
}

fn label(service: &Service, token: &str) -> Result<Label, Refusal> {
    let id = device(service, token).ok_or(NOT_FOUND)?;
    service.label_of(&id).map_err(|e| match e {
        crate::service::OperatorError::NotFound(_) => NOT_FOUND,
        other => {
            tracing::error!("label: {other}");
            (StatusCode::SERVICE_UNAVAILABLE, "label unavailable\n")
        }
    })
}

async fn json(State(service): State<Arc<Service>>, Path(token): Path<String>) -> Response {
    match label(&service, &token) {
        Ok(l) => ([(header::CACHE_CONTROL, CACHE)], axum::Json(l)).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn page(State(service): State<Arc<Service>>, Path(token): Path<String>) -> Response {
    match label(&service, &token) {
        Ok(l) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, CACHE),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'",
                ),
            ],
            render(&l, &token).into_string(),
        )
            .into_response(),
        Err(r) => r.into_response(),
    }
}

async fn qr_svg(State(service): State<Arc<Service>>, Path(token): Path<String>) -> Response {
    qr(&service, &token, |url| {
        crate::operator::qr::svg(url).map(|s| ("image/svg+xml", s.into_bytes()))
    })
}

async fn qr_png(State(service): State<Arc<Service>>, Path(token): Path<String>) -> Response {
    qr(&service, &token, |url| {
        crate::operator::qr::png(url).map(|p| ("image/png", p))
    })
}

fn qr(
    service: &Service,
    token: &str,
    make: impl Fn(&str) -> Result<(&'static str, Vec<u8>), crate::operator::qr::QrError>,
) -> Response {
    let Some(id) = device(service, token) else {
        return not_found();
    };
    let made = service
        .label_url(&id)
        .map_err(|e| e.to_string())
        .and_then(|url| make(&url).map_err(|e| e.to_string()));
    match made {
        Ok((kind, bytes)) => (
            [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, CACHE)],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("label QR code: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "QR code unavailable\n").into_response()
        }
    }
}

async fn sbom(State(service): State<Arc<Service>>, Path(token): Path<String>) -> Response {
    let Some(id) = device(service.as_ref(), &token) else {
        return not_found();
    };
    let shown = service
        .label_settings()
        .is_ok_and(|s| s.show.contains(&crate::core::label::LabelField::Sbom));
    let found = service
        .running_release(&id)
        .and_then(|release| service.release_sbom(&release));
    match found {
        Ok((info, document)) if shown => (
            [
                (header::CONTENT_TYPE, info.media_type()),
                (header::CACHE_CONTROL, CACHE),
            ],
            document,
        )
            .into_response(),
        _ => not_found(),
    }
}

/// The label page: a card, printable, readable on a phone.
fn render(l: &Label, token: &str) -> Markup {
    let title = l
        .model
        .clone()
        .or_else(|| l.serial.clone())
        .unwrap_or_else(|| "Device".into());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Security label: " (title) }
                style { (STYLE) }
            }
            body {
                main {
                    h1 { "Security label" }
                    p class="muted" { "Live status, as of " (crate::operator::terminal::when(l.as_of)) " UTC" }
                    table {
                        @if let Some(m) = &l.manufacturer { tr { th { "Manufacturer" } td id="manufacturer" { (m) } } }
                        @if let Some(m) = &l.model { tr { th { "Model" } td id="model" { (m) } } }
                        @if let Some(s) = &l.serial { tr { th { "Serial number" } td id="serial" { (s) } } }
                        @if let Some(f) = &l.firmware {
                            tr { th { "Firmware" } td id="firmware" class=(if f.current == Some(false) { "warn" } else { "" }) {
                                (f.version)
                                @match (f.current, &f.newest) {
                                    (Some(true), _) => { " (current)" }
                                    (Some(false), Some(n)) => { " (an update is available: " (n) ")" }
                                    _ => {}
                                }
                            } }
                        }
                        @if let Some(c) = &l.certificate {
                            tr { th { "Credential" } td id="certificate" class=(if c.valid { "ok" } else { "bad" }) {
                                @if c.valid { "valid" @if let Some(t) = c.not_after { " until " (crate::core::support::date(t)) } } @else { "none valid" }
                            } }
                        }
                        @if let Some(s) = &l.support {
                            tr { th { "Security updates" } td id="support" class=(support_class(s.status)) {
                                @match (s.status, &s.ends_on) {
                                    (SupportStatus::Unsupported, Some(d)) => { "ENDED on " (d) ": this device is unsupported" }
                                    (SupportStatus::Ending, Some(d)) => { "end on " (d) }
                                    (SupportStatus::Supported, Some(d)) => { "until " (d) }
                                    _ => { "no end date published" }
                                }
                            } }
                        }
                        @if let Some(v) = &l.vulnerabilities {
                            tr { th { "Known vulnerabilities" } td id="vulnerabilities" class=(if v.status == "affected" { "bad" } else { "" }) {
                                @if v.exposures.is_empty() { (v.status) }
                                @for e in &v.exposures {
                                    div { (e.vulnerability) ": " (format!("{:?}", e.status).to_lowercase())
                                        @if let Some(fix) = &e.fixed_in { ", fixed in " (fix) } @else { ", no fix yet" } }
                                }
                            } }
                        }
                        @if let Some(d) = l.decommissioned {
                            tr { th { "Decommissioned" } td id="decommissioned" { (if d { "yes: wiped, credentials revoked" } else { "no" }) } }
                        }
                        @if let Some(s) = &l.sbom { tr { th { "SBOM" } td { a id="sbom" href=(s) { "software bill of materials" } } } }
                    }
                    img id="qr" src={ (token) "/qr.svg" } alt={ "QR code of " (l.url) } width="160" height="160";
                    p class="muted" { code { (l.url) } }
                }
            }
        }
    }
}

fn support_class(status: SupportStatus) -> &'static str {
    match status {
        SupportStatus::Unsupported => "bad",
        SupportStatus::Ending => "warn",
        SupportStatus::Supported => "ok",
        _ => "",
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d1f23}\
main{max-width:34rem;margin:2rem auto;background:#fff;border:2px solid #1d1f23;border-radius:10px;padding:1.5rem}\
h1{margin:0 0 .2rem;font-size:1.4rem}table{border-collapse:collapse;width:100%;margin:1rem 0}\
th{text-align:left;vertical-align:top;padding:.35rem .8rem .35rem 0;white-space:nowrap;color:#555}\
td{padding:.35rem 0}.muted{color:#666;font-size:.85rem}.bad{color:#b00020;font-weight:600}\
.warn{color:#9a6700;font-weight:600}.ok{color:#1a7f37}code{word-break:break-all}";
