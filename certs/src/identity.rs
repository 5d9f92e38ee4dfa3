//! A device's birth identity as the factory leaves it on the device.
//!
//! ```text
//! DIR/idevid.pem             the IDevID certificate
//! DIR/idevid.key             its private key (PKCS#8, mode 0600)
//! DIR/manufacturer-root.pem  the manufacturer root CA (anchor for IDevIDs and the MASA cert)
//! DIR/masa.pem               the manufacturer's voucher-signing certificate (the voucher anchor)
//! ```

use std::path::Path;

use crate::chain::{self, Usage};
use crate::error::CertError;
use crate::files;
use crate::inspect::CertInfo;
use crate::key::KeyPair;

/// File names inside an identity directory.
pub mod layout {
    /// IDevID certificate.
    pub const IDEVID_CERT: &str = "idevid.pem";
    /// IDevID private key.
    pub const IDEVID_KEY: &str = "idevid.key";
    /// Manufacturer root CA.
    pub const MANUFACTURER_ROOT: &str = "manufacturer-root.pem";
    /// Voucher-signing certificate.
    pub const MASA_CERT: &str = "masa.pem";
}

/// A device's birth identity.
#[derive(Debug)]
pub struct Identity {
    /// The device serial (from the IDevID subject).
    pub serial: String,
    /// IDevID certificate, DER.
    pub idevid: Vec<u8>,
    /// IDevID private key.
    pub key: KeyPair,
    /// Manufacturer root CA, DER.
    pub manufacturer_root: Vec<u8>,
    /// Voucher-signing certificate, DER.
    pub masa_cert: Vec<u8>,
    /// Parsed IDevID.
    pub info: CertInfo,
    /// Parsed voucher-signing certificate.
    pub masa_info: CertInfo,
}

impl Identity {
    /// Assembles an identity and checks that it hangs together: the key is the IDevID's, and
    /// both the IDevID and the voucher signer chain to the manufacturer root at `now`.
    pub fn new(
        idevid: Vec<u8>,
        key: KeyPair,
        manufacturer_root: Vec<u8>,
        masa_cert: Vec<u8>,
        now: u64,
    ) -> Result<Identity, CertError> {
        let info = CertInfo::parse(&idevid)?;
        if info.public_key != key.public_key() {
            return Err(CertError::Key(
                "the IDevID private key does not belong to the IDevID certificate".into(),
            ));
        }
        let serial = info.device_serial()?.to_string();
        let anchors = [manufacturer_root.clone()];
        chain::verify(&idevid, &[], &anchors, now, Usage::ClientAuth)?;
        let masa_info = CertInfo::parse(&masa_cert)?;
        chain::verify(&masa_cert, &[], &anchors, now, Usage::ClientAuth)?;
        Ok(Identity {
            serial,
            idevid,
            key,
            manufacturer_root,
            masa_cert,
            info,
            masa_info,
        })
    }

    /// Loads and checks an identity directory.
    pub fn load(dir: &Path, now: u64) -> Result<Identity, CertError> {
        Identity::new(
            files::read_cert(&dir.join(layout::IDEVID_CERT))?,
            files::read_key(&dir.join(layout::IDEVID_KEY))?,
            files::read_cert(&dir.join(layout::MANUFACTURER_ROOT))?,
            files::read_cert(&dir.join(layout::MASA_CERT))?,
            now,
        )
    }

    /// Writes the identity directory (the key with mode 0600).
    pub fn save(&self, dir: &Path) -> Result<(), CertError> {
        files::write_public(
            &dir.join(layout::IDEVID_CERT),
            files::cert_pem(&self.idevid).as_bytes(),
        )?;
        files::write_secret(&dir.join(layout::IDEVID_KEY), self.key.to_pem().as_bytes())?;
        files::write_public(
            &dir.join(layout::MANUFACTURER_ROOT),
            files::cert_pem(&self.manufacturer_root).as_bytes(),
        )?;
        files::write_public(
            &dir.join(layout::MASA_CERT),
            files::cert_pem(&self.masa_cert).as_bytes(),
        )
    }

    /// The authority key identifier of the IDevID, which vouchers name as `idevid-issuer`.
    pub fn idevid_issuer(&self) -> &[u8] {
        self.info.authority_key_id.as_deref().unwrap_or_default()
    }
}
