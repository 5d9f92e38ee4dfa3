//! The authenticated peer, as the transport hands it to the core.
//!
//! The TLS layer has already validated the certificate chain (to a manufacturer root for an
//! IDevID, to our issuing CA for an LDevID); this module only reads who it is.

use certs::CertInfo;
use protocol::keys::PublicKey;

use super::error::LifecycleError;

/// Which kind of credential authenticated the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A birth certificate from a manufacturer: onboarding only.
    Idevid,
    /// An operational certificate we issued.
    Ldevid,
}

/// A device authenticated by its TLS client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePeer {
    /// Which credential it used.
    pub kind: CredentialKind,
    /// Device serial, from the certificate subject (never from a request body).
    pub serial: String,
    /// Serial number of the certificate, lowercase hex.
    pub cert_serial: String,
    /// The certificate's public key.
    pub public_key: PublicKey,
}

impl DevicePeer {
    /// Reads the peer from its validated leaf certificate. A leaf issued by one of our issuing
    /// CAs (`is_ours` on its authority key id) is an LDevID; anything else that passed TLS is an
    /// IDevID from an imported manufacturer.
    pub fn from_certificate(
        leaf_der: &[u8],
        is_ours: impl Fn(&[u8]) -> bool,
    ) -> Result<DevicePeer, LifecycleError> {
        let info = CertInfo::parse(leaf_der)
            .map_err(|e| LifecycleError::Unauthorized(format!("client certificate: {e}")))?;
        let serial = info
            .device_serial()
            .map_err(|e| LifecycleError::Unauthorized(format!("client certificate: {e}")))?
            .to_string();
        let ours = info.authority_key_id.as_deref().is_some_and(is_ours);
        Ok(DevicePeer {
            kind: if ours {
                CredentialKind::Ldevid
            } else {
                CredentialKind::Idevid
            },
            serial,
            cert_serial: info.serial_hex,
            public_key: info.public_key,
        })
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
