//! The RADIUS endpoints asked as FreeRADIUS's `rest` module asks them (JSON attributes, HTTP
//! Basic): what the demo and the fleet simulator measure the onboarder's side with, without a
//! RADIUS server in between.

use std::time::Duration;

use serde_json::{Value, json};

use crate::operator::client::ClientError;

/// An access decision as FreeRADIUS would read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Accepted (HTTP 200), else refused (401).
    pub granted: bool,
    /// The attributes it carries (`reply:Tunnel-Private-Group-Id`, `reply:Tunnel-Password`).
    pub attributes: Value,
}

/// Asks the RADIUS endpoints of one onboarder.
pub struct AccessClient {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl AccessClient {
    /// A client of the endpoints at `base` (the admin API's address), with FreeRADIUS's token.
    pub fn new(base: &str, token: String) -> AccessClient {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        AccessClient {
            agent,
            base: base.trim_end_matches('/').to_string(),
            token,
        }
    }

    /// An EAP-TLS login FreeRADIUS verified: the certificate's CN and serial.
    pub fn eap_tls(&self, common_name: &str, cert_serial: &str) -> Result<Answer, ClientError> {
        self.ask(
            "/radius/v1/eap-tls",
            &json!({
                "TLS-Client-Cert-Common-Name": {"type": "string", "value": [common_name]},
                "TLS-Client-Cert-Serial": {"type": "string", "value": [cert_serial]},
            }),
        )
    }

    /// A MAC authorization for the station `mac`.
    pub fn mac(&self, mac: &str) -> Result<Answer, ClientError> {
        self.ask(
            "/radius/v1/mac",
            &json!({"Calling-Station-Id": {"type": "string", "value": [mac]}}),
        )
    }

    fn ask(&self, route: &str, attributes: &Value) -> Result<Answer, ClientError> {
        let basic = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("freeradius:{}", self.token),
        );
        let mut response = self
            .agent
            .post(format!("{}{route}", self.base))
            .header("Authorization", format!("Basic {basic}"))
            .header("Content-Type", "application/json")
            .send(attributes.to_string().as_bytes())
            .map_err(|e| ClientError::Unreachable {
                base: self.base.clone(),
                detail: e.to_string(),
            })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let granted = match status {
            200 => true,
            401 => false,
            _ => {
                return Err(ClientError::Refused {
                    status,
                    message: body,
                });
            }
        };
        let attributes =
            serde_json::from_str(&body).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(Answer {
            granted,
            attributes,
        })
    }
}
