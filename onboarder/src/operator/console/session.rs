//! Sessions and CSRF tokens: stateless, MACed with a key derived from the admin token.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, html};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::{Console, UiError, html_response};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "onboarder_session";
/// How long a session lasts, in seconds.
const LIFETIME: u64 = 8 * 3600;
/// Largest form the CSRF check reads.
const MAX_FORM: usize = 64 * 1024;

/// The MAC key of sessions and CSRF tokens.
pub(crate) struct Keys {
    mac: hmac::Key,
    token: String,
}

impl Keys {
    pub(crate) fn new(token: &str) -> Keys {
        let derived = ring::digest::digest(
            &ring::digest::SHA256,
            format!("onboarder console sessions\0{token}").as_bytes(),
        );
        Keys {
            mac: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            token: token.to_string(),
        }
    }

    /// A new session cookie value, good until `now + LIFETIME`.
    fn issue(&self, now: u64) -> Option<String> {
        let mut payload = (now + LIFETIME).to_be_bytes().to_vec();
        let mut nonce = [0u8; 16];
        SystemRandom::new().fill(&mut nonce).ok()?;
        payload.extend_from_slice(&nonce);
        let tag = hmac::sign(&self.mac, &[b"session:", &payload[..]].concat());
        Some(format!("{}.{}", hex::encode(&payload), hex::encode(tag)))
    }

    /// Whether `value` is a session we issued that has not expired.
    fn valid(&self, value: &str, now: u64) -> bool {
        let Some((payload, tag)) = value.split_once('.') else {
            return false;
        };
        let (Ok(payload), Ok(tag)) = (hex::decode(payload), hex::decode(tag)) else {
            return false;
        };
        if payload.len() != 24
            || hmac::verify(&self.mac, &[b"session:", &payload[..]].concat(), &tag).is_err()
        {
            return false;
        }
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&payload[..8]);
        now < u64::from_be_bytes(expiry)
    }

    /// The CSRF token of a session.
    pub(crate) fn csrf(&self, session: &str) -> String {
        hex::encode(hmac::sign(
            &self.mac,
            &[b"csrf:", session.as_bytes()].concat(),
        ))
    }
}

/// The session cookie of a request, if any.
fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The session a signed-in request carries, for its handler (to put the CSRF token in forms).
#[derive(Clone)]
pub(crate) struct Session {
    /// The CSRF token every form of the page carries.
    pub(crate) csrf: String,
}

/// Lets a request with a valid session through (with its [`Session`]); for a form, also checks
/// its CSRF token. A page without a session goes to the sign-in page; a form is refused.
pub(crate) async fn require(State(console): State<Console>, req: Request, next: Next) -> Response {
    let now = console.control.service.now();
    let session = session_of(req.headers()).filter(|s| console.keys.valid(s, now));
    let Some(session) = session else {
        return if req.method() == Method::GET {
            Redirect::to("/ui/login").into_response()
        } else {
            UiError(StatusCode::FORBIDDEN, "sign in first".into()).into_response()
        };
    };
    let csrf = console.keys.csrf(&session);
    let (mut parts, body) = req.into_parts();
    let body = if parts.method == Method::POST {
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM).await else {
            return UiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the form is too large".into(),
            )
            .into_response();
        };
        let presented = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
            .ok()
            .and_then(|fields| fields.into_iter().find(|(k, _)| k == "csrf"))
            .map(|(_, v)| v)
            .unwrap_or_default();
        if !crate::operator::api::constant_time_eq(presented.as_bytes(), csrf.as_bytes()) {
            return UiError(
                StatusCode::FORBIDDEN,
                "the form's CSRF token is missing or wrong; reload the page".into(),
            )
            .into_response();
        }
        Body::from(bytes)
    } else {
        body
    };
    parts.extensions.insert(Session { csrf });
    next.run(Request::from_parts(parts, body)).await
}

pub(crate) async fn login_page() -> Response {
    html_response(login_form(None))
}

fn login_form(error: Option<&str>) -> maud::Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Sign in · onboarder" }
                link rel="stylesheet" href="/ui/console.css";
            }
            body { main class="login" {
                h1 { "Sign in to the onboarder" }
                @if let Some(error) = error { p class="error" id="error" { (error) } }
                form method="post" action="/ui/login" {
                    label for="token" { "Admin token (" code { "onboarder token" } " prints it)" }
                    input id="token" name="token" type="password" autocomplete="current-password" required;
                    button id="sign-in" type="submit" { "Sign in" }
                }
            } }
        }
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct Login {
    token: String,
}

/// Signs in with the admin token: a session cookie and on to the overview.
pub(crate) async fn login(
    State(console): State<Console>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<Login>,
) -> Response {
    let ours = console.keys.token.as_bytes();
    if !crate::operator::api::constant_time_eq(form.token.trim().as_bytes(), ours) {
        return (
            StatusCode::UNAUTHORIZED,
            html_response(login_form(Some("That is not the admin token."))),
        )
            .into_response();
    }
    let Some(session) = console.keys.issue(console.control.service.now()) else {
        return UiError(StatusCode::INTERNAL_SERVER_ERROR, "no randomness".into()).into_response();
    };
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={session}; Path=/ui; Max-Age={LIFETIME}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui")).into_response()
}

/// Signs out: the cookie is dropped (it stays valid until it expires if someone kept it;
/// changing the admin token ends every session).
pub(crate) async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/login")).into_response()
}
