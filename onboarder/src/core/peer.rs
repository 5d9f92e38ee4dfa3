//! The authenticated peer, as the transport hands it to the core.
//!
//! The TLS layer has already validated the certificate chain (to a manufacturer root for an
//! IDevID, to our issuing CA for an LDevID); this module only reads who it is. An IDevID names
//! its device by the maker whose anchor the verified path ended at (given by the caller, who
//! verified it) and its subject serialNumber. An LDevID names it in its subject CN, which we
//! wrote; the core still checks that the certificate is byte for byte one we issued to that
//! device, so a certificate that merely claims our issuer cannot pose as an LDevID.

use certs::CertInfo;
use protocol::keys::PublicKey;

use super::error::LifecycleError;
use super::identity::{DeviceId, MakerId};

/// Which kind of credential authenticated the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A birth certificate from a manufacturer: onboarding only.
    Idevid,
    /// An operational certificate we issued.
    Ldevid,
}

/// Which transport the peer came over: a fact about the connection, which some rules weigh
/// (a CSR's binding is part of our QUIC protocol, optional to a standard EST client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Channel {
    /// Our protocol over QUIC.
    #[default]
    Quic,
    /// The standard interfaces over HTTPS (EST, BRSKI).
    Https,
    /// The standard interfaces over CoAP and DTLS (EST-coaps, constrained BRSKI).
    Coap,
}

impl Channel {
    /// Whether it carries the standard interfaces, whose clients we did not write: they may
    /// enroll an expected device without our voucher steps, and bind a CSR to the session
    /// only if they can.
    pub fn is_standard(self) -> bool {
        matches!(self, Channel::Https | Channel::Coap)
    }
}

/// A device authenticated by its TLS client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePeer {
    /// Which credential it used.
    pub kind: CredentialKind,
    /// The device, from the certificate (never from a request body).
    pub id: DeviceId,
    /// Serial number of the certificate, lowercase hex.
    pub cert_serial: String,
    /// The certificate's public key.
    pub public_key: PublicKey,
    /// The certificate's authority key identifier: for an IDevID, what a voucher's
    /// `idevid-issuer` must name.
    pub issuer_key_id: Option<Vec<u8>>,
    /// SHA-256 of the certificate (DER).
    pub cert_sha256: [u8; 32],
    /// The IDevID certificate (DER), which a MASA needs to check the device's voucher request;
    /// `None` for an LDevID.
    pub idevid: Option<Vec<u8>>,
    /// The transport it came over (set by the transport; QUIC unless it says otherwise).
    pub channel: Channel,
}

impl DevicePeer {
    /// Reads the peer from its validated leaf certificate. A leaf issued by one of our issuing
    /// CAs (`is_ours` on its authority key id) is an LDevID; anything else that passed TLS is an
    /// IDevID, whose maker `maker_of_idevid` tells (the anchor its verified path ends at; `None`
    /// if it ends at none of the manufacturers').
    pub fn from_certificate(
        leaf_der: &[u8],
        is_ours: impl Fn(&[u8]) -> bool,
        maker_of_idevid: impl FnOnce() -> Option<MakerId>,
    ) -> Result<DevicePeer, LifecycleError> {
        let bad = |e: String| LifecycleError::Unauthorized(format!("client certificate: {e}"));
        let info = CertInfo::parse(leaf_der).map_err(|e| bad(e.to_string()))?;
        let serial = info.device_serial().map_err(|e| bad(e.to_string()))?;
        let ours = info.authority_key_id.as_deref().is_some_and(is_ours);
        let (kind, id) = if ours {
            let id: DeviceId = info
                .common_name
                .as_deref()
                .unwrap_or_default()
                .parse()
                .map_err(|e| bad(format!("not an LDevID of ours: {e}")))?;
            if id.serial != serial {
                return Err(bad("its CN and serialNumber name different devices".into()));
            }
            (CredentialKind::Ldevid, id)
        } else {
            let maker = maker_of_idevid()
                .ok_or_else(|| bad("it does not chain to a manufacturer anchor".into()))?;
            let id = DeviceId::new(maker, serial).map_err(|e| bad(e.to_string()))?;
            (CredentialKind::Idevid, id)
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf_der);
        let mut cert_sha256 = [0u8; 32];
        cert_sha256.copy_from_slice(digest.as_ref());
        Ok(DevicePeer {
            kind,
            id,
            cert_serial: info.serial_hex,
            public_key: info.public_key,
            issuer_key_id: info.authority_key_id,
            cert_sha256,
            idevid: (kind == CredentialKind::Idevid).then(|| leaf_der.to_vec()),
            channel: Channel::Quic,
        })
    }

    /// The same peer, over `channel`.
    pub fn over(mut self, channel: Channel) -> DevicePeer {
        self.channel = channel;
        self
    }

    /// Whether a CSR from this peer must carry its session's binding.
    pub fn binding_required(&self, policy: &super::policy::Policy) -> bool {
        !self.channel.is_standard() || policy.require_csr_binding
    }

    /// Refuses unless the peer used `kind` of credential.
    pub fn require(&self, kind: CredentialKind, action: &str) -> Result<(), LifecycleError> {
        if self.kind == kind {
            Ok(())
        } else {
            Err(LifecycleError::Unauthorized(format!(
                "{action} needs an {} session",
                match kind {
                    CredentialKind::Idevid => "IDevID",
                    CredentialKind::Ldevid => "LDevID",
                }
            )))
        }
    }
}
