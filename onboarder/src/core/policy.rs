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
    /// How long a certificate replaced by a renewal keeps working (it stops at its own expiry
    /// if that comes first), in seconds.
    #[serde(default = "default_grace")]
    pub superseded_grace: u64,
    /// Whether an active device whose every LDevID expired (it was offline through its
    /// renewal window) may get a new one by enrolling again with its pinned IDevID.
    #[serde(default = "default_reenroll")]
    pub reenroll_expired: bool,
    /// Whether a CSR that arrives over HTTPS (EST) must carry the TLS session's channel
    /// binding (RFC 9266 tls-exporter, in its challengePassword). A binding present is always
    /// checked, and our QUIC protocol always carries one; a client made of curl and openssl
    /// cannot, so this is off by default.
    #[serde(default)]
    pub require_csr_binding: bool,
    /// Admit a device no voucher was imported for when its maker's MASA vouches for it to us
    /// (a nonced voucher pinning our root, for the device's own request): BRSKI's registrar
    /// policy of trusting the manufacturer's sales records. Off by default: the owner lists
    /// its devices by importing their vouchers.
    #[serde(default)]
    pub admit_vouched: bool,
    /// Where the issuing CAs' CRLs are published (`https://HOST:PORT/crl`): every LDevID
    /// names `{crl_url}/issuing-ca-{generation}.crl` as its CRL distribution point. `onboarder
    /// init` sets it from the first server name and the HTTPS port.
    #[serde(default)]
    pub crl_url: Option<String>,
    /// Where the HTTPS listener serves firmware images (`https://HOST:PORT/firmware`): a
    /// campaign run over HTTPS offers `{firmware_url}/{sha256}`. `onboarder init` sets it
    /// from the first server name and the HTTPS port.
    #[serde(default)]
    pub firmware_url: Option<String>,
    /// How long an owner-root rollover waits, at most, for every active device to take the
    /// new root before the issuing CA moves under it, in seconds. A device away that long
    /// still connects (the server presents the NewWithOld cross-certificate) and gets the new
    /// root in its next welcome.
    #[serde(default = "default_root_wait")]
    pub root_distribution_wait: u64,
    /// What a network access server is told about devices: where each goes, and what a
    /// quarantined one gets.
    #[serde(default)]
    pub network_access: super::network_access::AccessPolicy,
}

fn default_grace() -> u64 {
    3600
}

fn default_root_wait() -> u64 {
    7 * 86_400
}

fn default_reenroll() -> bool {
    true
}

/// One generation of issuing CA.
pub struct IssuingCa {
    /// Generation number (1, 2, ... after each rollover).
    pub generation: u32,
    /// The CA, with its key (retired generations keep signing their CRLs).
    pub ca: Ca,
    /// Its subject key identifier, which its certificates name as their authority key id.
    pub key_id: Vec<u8>,
    /// The chain above certificates it issues: this CA first, the owner root last (DER).
    pub chain: Vec<Vec<u8>>,
    /// When it stopped issuing (a rollover), if it did. Its CRL is published until the last
    /// certificate it issued has expired.
    pub retired_at: Option<u64>,
}

/// The owner roots devices are to trust, and the cross-certificates between them: one root,
/// or during an owner-root rollover the old and the new one (RFC 7030 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRoots {
    /// The roots in force, DER, oldest first.
    pub trusted: Vec<Vec<u8>>,
    /// NewWithOld and OldWithNew while two roots are in force, DER.
    pub links: Vec<Vec<u8>>,
    /// [`protocol::message::anchors_digest`] of `trusted`: what a device that trusts exactly
    /// these says in its hello.
    pub digest: [u8; 32],
}

impl OwnerRoots {
    /// The roots `trusted`, linked by `links`.
    pub fn new(trusted: Vec<Vec<u8>>, links: Vec<Vec<u8>>) -> Self {
        let digest = protocol::message::anchors_digest(&trusted);
        OwnerRoots {
            trusted,
            links,
            digest,
        }
    }

    /// Whether `root` (DER) is one of the roots in force.
    pub fn trusts(&self, root: &[u8]) -> bool {
        self.trusted.iter().any(|r| r == root)
    }
}

/// The registrar's context: its own certificate, its issuing CAs and the policy. Replaced as a
/// whole on a CA rollover.
pub struct Registrar {
    /// Our TLS server certificate (DER): what devices must have seen (proximity).
    pub registrar_cert: Vec<u8>,
    /// The certificate it replaced (a renewal while the server runs): devices that connected
    /// before the renewal saw that one.
    pub previous_registrar_cert: Option<Vec<u8>>,
    /// The issuing CA that signs new certificates.
    pub issuing: IssuingCa,
    /// Earlier generations, oldest first: their certificates stay valid until they expire
    /// (under a root still in force).
    pub retired: Vec<IssuingCa>,
    /// The owner roots in force.
    pub roots: OwnerRoots,
    /// The policy.
    pub policy: Policy,
}

impl Registrar {
    /// Every generation, oldest first, the current one last.
    pub fn generations(&self) -> impl Iterator<Item = &IssuingCa> {
        self.retired.iter().chain(std::iter::once(&self.issuing))
    }

    /// The owner root our issuing CA chains to: what vouchers must pin.
    pub fn owner_root(&self) -> Option<&[u8]> {
        self.issuing.chain.last().map(Vec::as_slice)
    }

    /// The CA certificates a client is given (EST `cacerts`, EST-coaps `crts`): the issuing CA
    /// and its root, then the other roots in force and the cross-certificates between them
    /// (RFC 7030 4.1.3), each once.
    pub fn ca_certificates(&self) -> Vec<&[u8]> {
        let mut certs: Vec<&[u8]> = self.issuing.chain.iter().map(Vec::as_slice).collect();
        for extra in self.roots.trusted.iter().chain(&self.roots.links) {
            if !certs.contains(&extra.as_slice()) {
                certs.push(extra);
            }
        }
        certs
    }

    /// Every generation that chains to a root in force: what LDevIDs may come from.
    pub fn trusted_generations(&self) -> impl Iterator<Item = &IssuingCa> {
        self.generations()
            .filter(|g| g.chain.last().is_some_and(|root| self.roots.trusts(root)))
    }

    /// Whether `key_id` is one of our issuing CAs under a root in force: a client certificate
    /// it issued is an LDevID.
    pub fn is_ours(&self, key_id: &[u8]) -> bool {
        self.trusted_generations().any(|c| c.key_id == key_id)
    }
}

/// Fresh randomness for one decision. Passed in so that the core never reads an RNG.
#[derive(Debug, Clone, Copy)]
pub struct Entropy {
    /// Serial number for a certificate.
    pub cert_serial: [u8; 16],
    /// Material for a Wi-Fi passphrase.
    pub psk: [u8; 16],
}
