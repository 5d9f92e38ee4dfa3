//! A device's birth identity as the factory leaves it on the device: certificates only. The
//! IDevID's private key is the key store's business: a file next to these ([`Birth`], for
//! devices whose key the factory made) or an object in a secure element that never leaves it.
//!
//! ```text
//! DIR/idevid.pem             the IDevID certificate
//! DIR/idevid.key             its private key (PKCS#8, mode 0600), when it is kept in a file
//! DIR/manufacturer-root.pem  the manufacturer root CA (anchor for IDevIDs and the MASA cert)
//! DIR/masa.pem               the manufacturer's voucher-signing certificate (the voucher anchor)
//! DIR/firmware.pub           the manufacturer's firmware-signing public key (Ed25519)
//! DIR/product.json           vendor and class identifiers that firmware manifests must name
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
    /// Firmware-signing public key.
    pub const FIRMWARE_KEY: &str = "firmware.pub";
    /// Product identifiers.
    pub const PRODUCT: &str = "product.json";
}

/// What the device is, for firmware: manifests must name this vendor and class and be signed
/// by this key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Vendor identifier.
    pub vendor_id: String,
    /// Class (model) identifier.
    pub class_id: String,
    /// The manufacturer's firmware-signing key.
    pub firmware_key: protocol::keys::PublicKey,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ProductFile {
    vendor_id: String,
    class_id: String,
}

/// A device's birth identity: its certificates and what they say.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The device serial (from the IDevID subject).
    pub serial: String,
    /// IDevID certificate, DER.
    pub idevid: Vec<u8>,
    /// Manufacturer root CA, DER.
    pub manufacturer_root: Vec<u8>,
    /// Voucher-signing certificate, DER.
    pub masa_cert: Vec<u8>,
    /// Parsed IDevID.
    pub info: CertInfo,
    /// Parsed voucher-signing certificate.
    pub masa_info: CertInfo,
    /// Vendor, class and firmware key.
    pub product: Product,
}

impl Identity {
    /// Assembles an identity and checks that it hangs together: both the IDevID and the
    /// voucher signer chain to the manufacturer root at `now`, or at the IDevID's birth when
    /// `now` is earlier (a device whose clock was never set, or reset to years ago, is no
    /// older than its birth certificate; a nonced voucher sets its clock later).
    pub fn new(
        idevid: Vec<u8>,
        manufacturer_root: Vec<u8>,
        masa_cert: Vec<u8>,
        product: Product,
        now: u64,
    ) -> Result<Identity, CertError> {
        let info = CertInfo::parse(&idevid)?;
        let serial = info.device_serial()?.to_string();
        let now = now.max(info.not_before);
        let anchors = [manufacturer_root.clone()];
        chain::verify(&idevid, &[], &anchors, now, Usage::ClientAuth)?;
        let masa_info = CertInfo::parse(&masa_cert)?;
        chain::verify(&masa_cert, &[], &anchors, now, Usage::ClientAuth)?;
        Ok(Identity {
            serial,
            idevid,
            manufacturer_root,
            masa_cert,
            info,
            masa_info,
            product,
        })
    }

    /// Loads and checks the certificates of an identity directory.
    pub fn load(dir: &Path, now: u64) -> Result<Identity, CertError> {
        Identity::new(
            files::read_cert(&dir.join(layout::IDEVID_CERT))?,
            files::read_cert(&dir.join(layout::MANUFACTURER_ROOT))?,
            files::read_cert(&dir.join(layout::MASA_CERT))?,
            load_product(dir)?,
            now,
        )
    }

    /// Writes the certificates of the identity directory.
    pub fn save(&self, dir: &Path) -> Result<(), CertError> {
        files::write_public(
            &dir.join(layout::IDEVID_CERT),
            files::cert_pem(&self.idevid).as_bytes(),
        )?;
        files::write_public(
            &dir.join(layout::MANUFACTURER_ROOT),
            files::cert_pem(&self.manufacturer_root).as_bytes(),
        )?;
        files::write_public(
            &dir.join(layout::MASA_CERT),
            files::cert_pem(&self.masa_cert).as_bytes(),
        )?;
        let spki = crate::key::spki_of(&self.product.firmware_key);
        files::write_public(
            &dir.join(layout::FIRMWARE_KEY),
            files::pem_block("PUBLIC KEY", &spki).as_bytes(),
        )?;
        let product = ProductFile {
            vendor_id: self.product.vendor_id.clone(),
            class_id: self.product.class_id.clone(),
        };
        let json =
            serde_json::to_vec_pretty(&product).map_err(|e| CertError::Generate(e.to_string()))?;
        files::write_public(&dir.join(layout::PRODUCT), &json)
    }

    /// Checks that `key` is the IDevID's public key (a key store holding another key would
    /// fail every handshake with a less clear error).
    pub fn check_key(&self, key: &protocol::keys::PublicKey) -> Result<(), CertError> {
        if &self.info.public_key != key {
            return Err(CertError::Key(
                "the IDevID private key does not belong to the IDevID certificate".into(),
            ));
        }
        Ok(())
    }

    /// The kind of the IDevID's key: new operational keys are made of the same kind.
    pub fn key_kind(&self) -> crate::KeyKind {
        crate::KeyKind::of(&self.info.public_key)
    }

    /// The authority key identifier of the IDevID, which vouchers name as `idevid-issuer`.
    pub fn idevid_issuer(&self) -> &[u8] {
        self.info.authority_key_id.as_deref().unwrap_or_default()
    }
}

/// A device as a factory that makes software keys leaves it: the identity and the IDevID key,
/// saved side by side (the key with mode 0600).
#[derive(Debug)]
pub struct Birth {
    /// The certificates.
    pub identity: Identity,
    /// The IDevID private key.
    pub key: KeyPair,
}

impl Birth {
    /// Pairs an identity with its key, checking they belong together.
    pub fn new(identity: Identity, key: KeyPair) -> Result<Birth, CertError> {
        identity.check_key(&key.public_key())?;
        Ok(Birth { identity, key })
    }

    /// Loads an identity directory with its key file.
    pub fn load(dir: &Path, now: u64) -> Result<Birth, CertError> {
        Birth::new(
            Identity::load(dir, now)?,
            files::read_key(&dir.join(layout::IDEVID_KEY))?,
        )
    }

    /// Writes the identity directory and the key file.
    pub fn save(&self, dir: &Path) -> Result<(), CertError> {
        self.identity.save(dir)?;
        files::write_secret(&dir.join(layout::IDEVID_KEY), self.key.to_pem().as_bytes())
    }
}

fn load_product(dir: &Path) -> Result<Product, CertError> {
    let path = dir.join(layout::PRODUCT);
    let file: ProductFile = serde_json::from_slice(&files::read_limited(&path, 64 * 1024)?)
        .map_err(|e| CertError::parse("product.json", e))?;
    let firmware_key =
        crate::key::public_key_from_pem(&files::read_pem_text(&dir.join(layout::FIRMWARE_KEY))?)?;
    Ok(Product {
        vendor_id: file.vendor_id,
        class_id: file.class_id,
        firmware_key,
    })
}
