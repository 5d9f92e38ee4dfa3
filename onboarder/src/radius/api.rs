//! The endpoints FreeRADIUS's `rest` module calls, on the admin API's loopback listener with a
//! token of their own (HTTP Basic, any user name, the token as password) that opens nothing
//! else. Bodies are FreeRADIUS's JSON encoding of the request's attributes
//! (`{"User-Name": {"type": "string", "value": ["..."]}, ...}`); answers are attribute lists in
//! the form the module decodes (`{"reply:Tunnel-Private-Group-Id": "20"}`), and the status
//! tells the module's return code (2xx: ok or updated; 401: reject; 5xx, or no answer: fail).
//!
//! ```text
//! POST /radius/v1/eap-tls    post-auth of an EAP-TLS login: the certificate's CN and serial
//! POST /radius/v1/mac        authorize of a MAC authorization: the device's own passphrase
//! POST /radius/v1/refused    Post-Auth-Type REJECT: a refusal FreeRADIUS made on its own
//! ```

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::{Map, Value, json};

use crate::control::Control;
use crate::core::network_access::Access;
use crate::service::AccessContext;

/// Largest request body: FreeRADIUS sends every attribute of the request, EAP messages
/// included.
const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
struct Radius {
    control: Arc<Control>,
    token: Arc<String>,
}

/// The RADIUS endpoints, authenticated with `token`.
pub fn router(control: Arc<Control>, token: String) -> Router {
    let state = Radius {
        control,
        token: Arc::new(token),
    };
    Router::new()
        .route("/radius/v1/eap-tls", post(eap_tls))
        .route("/radius/v1/mac", post(mac))
        .route("/radius/v1/refused", post(refused))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn authenticate(
    State(radius): State<Radius>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let password = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|pair| {
            let colon = pair.iter().position(|b| *b == b':')?;
            Some(pair[colon + 1..].to_vec())
        })
        .unwrap_or_default();
    if crate::operator::api::constant_time_eq(&password, radius.token.as_bytes()) {
        next.run(req).await
    } else {
        // Not 401: to the rest module that means "reject", and this is a configuration error.
        (StatusCode::FORBIDDEN, "wrong RADIUS token").into_response()
    }
}

/// The request's attributes, as FreeRADIUS encodes them.
struct Attributes(Map<String, Value>);

impl Attributes {
    fn parse(body: &[u8]) -> Option<Attributes> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Some(Attributes(map)),
            _ => None,
        }
    }

    /// Every value of `name`, as text.
    fn all(&self, name: &str) -> Vec<String> {
        let values = match self.0.get(name) {
            Some(Value::Object(attr)) => attr.get("value").cloned(),
            other => other.cloned(),
        };
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        match values {
            Some(Value::Array(values)) => values.iter().filter_map(text).collect(),
            Some(value) => text(&value).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// The first value of `name`.
    fn get(&self, name: &str) -> Option<String> {
        self.all(name).into_iter().next()
    }

    fn context(&self) -> AccessContext {
        AccessContext {
            nas: self
                .get("NAS-Identifier")
                .or_else(|| self.get("NAS-IP-Address"))
                .or_else(|| self.get("NAS-IPv6-Address")),
            station: self.get("Calling-Station-Id"),
        }
    }
}

/// An EAP-TLS login FreeRADIUS verified (chain and CRL): may this certificate's device on now?
async fn eap_tls(State(radius): State<Radius>, body: Bytes) -> Response {
    let Some(attributes) = Attributes::parse(&body) else {
        return bad_body();
    };
    let (Some(common_name), Some(serial)) = (
        attributes.get("TLS-Client-Cert-Common-Name"),
        attributes.get("TLS-Client-Cert-Serial"),
    ) else {
        return answer(Access::Refused {
            device: None,
            reason: "no client certificate in the request".into(),
        });
    };
    let access = radius
        .control
        .service
        .network_access_by_certificate(&common_name, &serial, &attributes.context())
        .await;
    match access {
        Ok(access) => answer(access),
        Err(e) => unavailable(e),
    }
}

/// A MAC authorization (the access point asks for a station's passphrase).
async fn mac(State(radius): State<Radius>, body: Bytes) -> Response {
    let Some(attributes) = Attributes::parse(&body) else {
        return bad_body();
    };
    let Some(mac) = attributes
        .get("Calling-Station-Id")
        .or_else(|| attributes.get("User-Name"))
    else {
        return answer(Access::Refused {
            device: None,
            reason: "no station address in the request".into(),
        });
    };
    match radius
        .control
        .service
        .network_access_by_mac(&mac, &attributes.context())
        .await
    {
        Ok(access) => answer(access),
        Err(e) => unavailable(e),
    }
}

/// A refusal FreeRADIUS made itself, for the audit log.
async fn refused(State(radius): State<Radius>, body: Bytes) -> Response {
    let Some(attributes) = Attributes::parse(&body) else {
        return bad_body();
    };
    let reason = attributes.all("Module-Failure-Message").join("; ");
    let reason = if reason.is_empty() {
        "no reason given".to_string()
    } else {
        reason
    };
    let common_name = attributes
        .get("TLS-Client-Cert-Common-Name")
        .or_else(|| attributes.get("User-Name"));
    match radius
        .control
        .service
        .network_access_refused_elsewhere(common_name.as_deref(), &reason, &attributes.context())
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => unavailable(e),
    }
}

fn bad_body() -> Response {
    (
        StatusCode::BAD_REQUEST,
        "the body is not FreeRADIUS's JSON encoding of attributes",
    )
        .into_response()
}

/// The decision as FreeRADIUS's rest module reads it.
fn answer(access: Access) -> Response {
    match access {
        Access::Granted {
            placement,
            passphrase,
            ..
        } => {
            let mut reply = Map::new();
            // Access is decided here: the authenticate section has nothing left to check.
            reply.insert("control:Auth-Type".into(), json!("Accept"));
            if let Some(vlan) = placement.vlan {
                reply.insert("reply:Tunnel-Type".into(), json!("VLAN"));
                reply.insert("reply:Tunnel-Medium-Type".into(), json!("IEEE-802"));
                reply.insert("reply:Tunnel-Private-Group-Id".into(), json!(vlan));
            }
            if let Some(filter) = placement.filter_id {
                reply.insert("reply:Filter-Id".into(), json!(filter));
            }
            if let Some(passphrase) = passphrase {
                // What hostapd's wpa_psk_radius takes as the station's passphrase.
                reply.insert("reply:Tunnel-Password".into(), json!(passphrase));
            }
            (StatusCode::OK, axum::Json(Value::Object(reply))).into_response()
        }
        Access::Refused { reason, .. } => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "reply:Reply-Message": reason })),
        )
            .into_response(),
    }
}

/// The store could not answer: FreeRADIUS treats a 5xx as `fail` (fail closed, or the
/// operator's fail-open for certificates it verified).
fn unavailable(e: crate::store::StoreError) -> Response {
    tracing::error!("answering the RADIUS server: {e}");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the onboarder cannot decide now",
    )
        .into_response()
}
