//! The operator's issuance policy and the registrar's fixed context.

use certs::Ca;
use serde::{Deserialize, Serialize};

/// How devices get onto the network.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum NetworkPolicy {
    /// WPA2/3-Personal with a unique random passphrase per device.
    Wifi {
        /// Network name.
        ssid: String,
    },
    /// WPA2/3-Enterprise with EAP-TLS on the LDevID.
    EapTls {
        /// Network name.
        ssid: String,
    },
}

/// What the operator decides about every issuance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Organization (O) in LDevIDs.
    pub organization: String,
    /// LDevID lifetime in seconds.
    pub ldevid_lifetime: u64,
    /// Network credentials to hand out.
    pub network: NetworkPolicy,
    /// DNS name devices check on operational sessions.
    pub server_name: String,
    /// Heartbeat interval for operational sessions, in seconds.
    pub heartbeat_secs: u32,
}

/// The registrar's fixed context: its own certificate, its issuing CA and the chain above it.
pub struct Registrar {
    /// Our TLS server certificate (DER): what devices must have seen (proximity).
    pub registrar_cert: Vec<u8>,
    /// The CA that issues LDevIDs.
    pub issuing: Ca,
    /// The chain sent with every LDevID: issuing CA first, owner root last (DER).
    pub chain: Vec<Vec<u8>>,
    /// Subject key identifiers of our issuing CAs, which mark a client certificate as an
    /// LDevID.
    pub issuer_key_ids: Vec<Vec<u8>>,
    /// The policy.
    pub policy: Policy,
}

/// Fresh randomness for one decision. Passed in so that the core never reads an RNG.
#[derive(Debug, Clone, Copy)]
pub struct Entropy {
    /// Serial number for a certificate.
    pub cert_serial: [u8; 16],
    /// Material for a Wi-Fi passphrase.
    pub psk: [u8; 16],
}
