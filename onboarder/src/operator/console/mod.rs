//! The operator's console: server-rendered HTML on the admin listener, under `/ui`.
//!
//! Signing in with the admin token gives a session cookie (`HttpOnly`, `SameSite=Strict`,
//! `Path=/ui`, eight hours; `Secure` when a TLS proxy says `X-Forwarded-Proto: https`). The
//! cookie is stateless: an expiry and a random nonce, MACed with a key derived from the admin
//! token, so every replica accepts it and changing the token ends every session. Every form
//! carries a CSRF token (a MAC of the session cookie), checked before any handler runs; with
//! `SameSite=Strict` that is two locks on every state change. Pages without a session redirect
//! to the sign-in page; forms without one are refused.
//!
//! Every value is escaped by the templates (maud). The only script (`/ui/console.js`) polls the
//! overview's counters, which are O(1) reads (tallies), and the Content-Security-Policy allows
//! nothing else.

mod pages;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use crate::control::Control;
use crate::operator::OperatorError;
use session::Keys;

/// The console's state: the control plane and the session keys.
#[derive(Clone)]
pub(crate) struct Console {
    control: Arc<Control>,
    keys: Arc<Keys>,
}

/// The console's routes, to merge into the admin API's router.
pub fn router(control: Arc<Control>, token: &str) -> Router {
    let console = Console {
        control,
        keys: Arc::new(Keys::new(token)),
    };
    let signed_in = Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/overview.json", get(pages::overview_json))
        .route("/ui/devices", get(pages::devices))
        .route("/ui/devices/{device}", get(pages::device))
        .route(
            "/ui/devices/{device}/sanitization",
            get(pages::sanitization),
        )
        .route("/ui/devices/{device}/{order}", post(pages::device_order))
        .route(
            "/ui/campaigns",
            get(pages::campaigns).post(pages::create_campaign),
        )
        .route("/ui/campaigns/{id}", get(pages::campaign))
        .route("/ui/campaigns/{id}/{order}", post(pages::order_campaign))
        .route("/ui/releases", get(pages::releases))
        .route("/ui/orders", get(pages::orders))
        .route("/ui/orders/{order}", post(pages::fleet_order))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/logout", post(session::logout))
        .layer(middleware::from_fn_with_state(
            console.clone(),
            session::require,
        ));
    Router::new()
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/console.js", get(script))
        .route("/ui/console.css", get(style))
        .merge(signed_in)
        .layer(middleware::from_fn(secure_headers))
        .with_state(console)
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

/// No framing, no sniffing, no referrer, nothing cached, and only our own script and style.
async fn secure_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A page in the console's frame: navigation, sign-out form (with the CSRF token), content.
fn page(title: &str, csrf: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · onboarder" }
                link rel="stylesheet" href="/ui/console.css";
                script src="/ui/console.js" defer {}
            }
            body {
                nav {
                    strong { "onboarder" }
                    a href="/ui" { "Overview" }
                    a href="/ui/devices" { "Devices" }
                    a href="/ui/campaigns" { "Campaigns" }
                    a href="/ui/releases" { "Releases" }
                    a href="/ui/orders" { "Orders" }
                    a href="/ui/audit" { "Audit log" }
                    form method="post" action="/ui/logout" class="inline" {
                        input type="hidden" name="csrf" value=(csrf);
                        button id="logout" type="submit" { "Sign out" }
                    }
                }
                main {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

/// A refusal, shown in a page of its own with the status it deserves.
pub(crate) struct UiError(StatusCode, String);

impl From<OperatorError> for UiError {
    fn from(e: OperatorError) -> Self {
        UiError(crate::operator::api::status_of(&e), e.to_string())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { "Refused · onboarder" } link rel="stylesheet" href="/ui/console.css"; }
                body { main {
                    h1 { "Refused" }
                    p class="error" id="error" { (self.1) }
                    p { a href="/ui" { "Back to the overview" } }
                } }
            }
        };
        (self.0, html_response(body)).into_response()
    }
}

type UiResult = Result<Response, UiError>;

fn html_response(markup: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// After a form: back to `to` (303, so a reload does not post again).
fn see_other(to: &str) -> UiResult {
    Ok(Redirect::to(to).into_response())
}

/// A path segment for a device name (`MAKER/SERIAL`: the slash escaped).
fn segment(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

/// Seconds since the epoch as a UTC date and time.
fn when(t: u64) -> String {
    certs::rfc3339(t)
}
