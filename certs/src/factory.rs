//! The manufacturer's side: a root CA that signs IDevIDs, a voucher-signing key (the MASA role),
//! and an Ed25519 firmware-signing key.
//!
//! ```text
//! DIR/manufacturer.json   name, model, hardware type, serial numbering, URLs
//! DIR/root-ca.pem|.key    manufacturer root CA (anchor of every IDevID)
//! DIR/masa.pem|.key       voucher-signing certificate and key
//! DIR/firmware.pub|.key   Ed25519 firmware-signing key (SubjectPublicKeyInfo / PKCS#8 v1)
//! ```

use std::path::Path;

use protocol::voucher::{Assertion, Voucher};
use serde::{Deserialize, Serialize};

use crate::brski::Encoding;
use crate::ca::{Ca, CaName, Validity, random_serial};
use crate::error::CertError;
use crate::files;
use crate::identity::{Birth, Identity};
use crate::inspect::CertInfo;
use crate::key::{KeyKind, KeyPair};
use crate::profile::{IdevidProfile, issue_idevid, issue_signer, validate_serial};

/// The example private enterprise arc of RFC 5612, used as the default hardware type.
pub const DEFAULT_HW_TYPE: &str = "1.3.6.1.4.1.32473.1";

/// Lifetime of the manufacturer root and voucher signer: 25 years.
const ROOT_LIFETIME: u64 = 25 * 365 * 24 * 3600;

/// File names inside a manufacturer directory.
pub mod layout {
    /// Settings.
    pub const CONFIG: &str = "manufacturer.json";
    /// Root CA certificate.
    pub const ROOT_CERT: &str = "root-ca.pem";
    /// Root CA key.
    pub const ROOT_KEY: &str = "root-ca.key";
    /// Voucher-signing certificate.
    pub const MASA_CERT: &str = "masa.pem";
    /// Voucher-signing key.
    pub const MASA_KEY: &str = "masa.key";
    /// Firmware-signing public key.
    pub const FIRMWARE_PUB: &str = "firmware.pub";
    /// Firmware-signing private key.
    pub const FIRMWARE_KEY: &str = "firmware.key";
    /// The online MASA's log of the vouchers it signed (JSON lines).
    pub const MASA_LOG: &str = "masa-log.jsonl";
}

/// A manufacturer's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManufacturerConfig {
    /// Organization name in every certificate.
    pub name: String,
    /// Product model.
    pub model: String,
    /// Hardware type OID (dotted) of the hardwareModuleName.
    pub hw_type: String,
    /// Serial numbers are this prefix followed by a six-digit counter.
    pub serial_prefix: String,
    /// Next serial counter value.
    pub next_serial: u64,
    /// MUD URL put in IDevIDs, if any.
    #[serde(default)]
    pub mud_url: Option<String>,
    /// MASA URL put in IDevIDs, if any.
    #[serde(default)]
    pub masa_url: Option<String>,
}

impl ManufacturerConfig {
    /// Defaults for a manufacturer called `name`.
    pub fn new(name: &str) -> Self {
        ManufacturerConfig {
            name: name.to_string(),
            model: "sensor-1".to_string(),
            hw_type: DEFAULT_HW_TYPE.to_string(),
            serial_prefix: "SN".to_string(),
            next_serial: 1,
            mud_url: None,
            masa_url: None,
        }
    }

    fn hw_type_oid(&self) -> Result<Vec<u64>, CertError> {
        let oid = self
            .hw_type
            .split('.')
            .map(str::parse)
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| CertError::Profile(format!("bad hardware type OID {}", self.hw_type)))?;
        if oid.len() < 2 {
            return Err(CertError::Profile(format!(
                "bad hardware type OID {}",
                self.hw_type
            )));
        }
        Ok(oid)
    }
}

/// What a firmware release says besides its image.
#[derive(Debug, Clone)]
pub struct FirmwareRelease<'a> {
    /// Version string.
    pub version: &'a str,
    /// Anti-rollback sequence number.
    pub sequence: u64,
    /// Device class, when not this manufacturer's model.
    pub class_id: Option<&'a str>,
    /// Expiry.
    pub expires_on: Option<u64>,
    /// SBOM reference.
    pub sbom: Option<protocol::manifest::SbomRef>,
    /// When security updates for the class end (the manufacturer's signed product data).
    pub support_ends_on: Option<u64>,
}

impl<'a> FirmwareRelease<'a> {
    /// A release of `version` at anti-rollback `sequence`, for the manufacturer's model, with
    /// no expiry, SBOM or support date (set the fields for those).
    pub fn new(version: &'a str, sequence: u64) -> Self {
        FirmwareRelease {
            version,
            sequence,
            class_id: None,
            expires_on: None,
            sbom: None,
            support_ends_on: None,
        }
    }
}

/// A manufacturer with its keys.
#[derive(Debug)]
pub struct Manufacturer {
    /// Settings.
    pub config: ManufacturerConfig,
    root: Ca,
    masa_key: KeyPair,
    masa_cert: Vec<u8>,
    firmware_key: KeyPair,
}

impl Manufacturer {
    /// Creates a manufacturer: root CA, voucher signer, firmware key.
    pub fn create(config: ManufacturerConfig, now: u64) -> Result<Manufacturer, CertError> {
        config.hw_type_oid()?;
        let root = Ca::root(
            &CaName {
                organization: config.name.clone(),
                common_name: format!("{} Manufacturer Root CA", config.name),
            },
            KeyPair::generate(KeyKind::P256)?,
            Validity::starting(now, ROOT_LIFETIME),
            &random_serial()?,
        )?;
        let masa_key = KeyPair::generate(KeyKind::P256)?;
        let masa_cert = issue_signer(
            &root,
            &config.name,
            &format!("{} Voucher Signer", config.name),
            &masa_key,
            Validity::starting(now, ROOT_LIFETIME),
            &random_serial()?,
        )?;
        Ok(Manufacturer {
            config,
            root,
            masa_key,
            masa_cert,
            firmware_key: KeyPair::generate(KeyKind::Ed25519)?,
        })
    }

    /// Writes the manufacturer directory (keys with mode 0600).
    pub fn save(&self, dir: &Path) -> Result<(), CertError> {
        self.save_config(dir)?;
        files::write_public(
            &dir.join(layout::ROOT_CERT),
            files::cert_pem(self.root.cert_der()).as_bytes(),
        )?;
        files::write_secret(
            &dir.join(layout::ROOT_KEY),
            self.root.key().to_pem().as_bytes(),
        )?;
        files::write_public(
            &dir.join(layout::MASA_CERT),
            files::cert_pem(&self.masa_cert).as_bytes(),
        )?;
        files::write_secret(
            &dir.join(layout::MASA_KEY),
            self.masa_key.to_pem().as_bytes(),
        )?;
        files::write_public(
            &dir.join(layout::FIRMWARE_PUB),
            self.firmware_key.public_pem().as_bytes(),
        )?;
        files::write_secret(
            &dir.join(layout::FIRMWARE_KEY),
            self.firmware_key.to_pem().as_bytes(),
        )
    }

    /// Writes only the settings (after minting advanced the serial counter).
    pub fn save_config(&self, dir: &Path) -> Result<(), CertError> {
        let json = serde_json::to_vec_pretty(&self.config)
            .map_err(|e| CertError::Generate(e.to_string()))?;
        files::write_public(&dir.join(layout::CONFIG), &json)
    }

    /// Loads a manufacturer directory.
    pub fn load(dir: &Path) -> Result<Manufacturer, CertError> {
        let config_path = dir.join(layout::CONFIG);
        let config: ManufacturerConfig =
            serde_json::from_slice(&files::read_limited(&config_path, 64 * 1024)?)
                .map_err(|e| CertError::parse("manufacturer.json", e))?;
        let root = Ca::from_parts(
            files::read_cert(&dir.join(layout::ROOT_CERT))?,
            files::read_key(&dir.join(layout::ROOT_KEY))?,
        )?;
        Ok(Manufacturer {
            config,
            root,
            masa_key: files::read_key(&dir.join(layout::MASA_KEY))?,
            masa_cert: files::read_cert(&dir.join(layout::MASA_CERT))?,
            firmware_key: files::read_key(&dir.join(layout::FIRMWARE_KEY))?,
        })
    }

    /// The manufacturer root CA certificate, DER.
    pub fn root_cert(&self) -> &[u8] {
        self.root.cert_der()
    }

    /// The voucher-signing certificate, DER.
    pub fn masa_cert(&self) -> &[u8] {
        &self.masa_cert
    }

    /// The firmware-signing key.
    pub fn firmware_key(&self) -> &KeyPair {
        &self.firmware_key
    }

    /// The next serial number, advancing the counter.
    pub fn next_serial(&mut self) -> String {
        let serial = format!(
            "{}-{:06}",
            self.config.serial_prefix, self.config.next_serial
        );
        self.config.next_serial += 1;
        serial
    }

    /// Mints the birth identity of device `serial`: a fresh key and its IDevID.
    pub fn mint(&self, serial: &str, kind: KeyKind, now: u64) -> Result<Birth, CertError> {
        validate_serial(serial)?;
        let key = KeyPair::generate(kind)?;
        let hw_type = self.config.hw_type_oid()?;
        let idevid = issue_idevid(
            &self.root,
            &IdevidProfile {
                serial,
                manufacturer: &self.config.name,
                hw_type: &hw_type,
                mud_url: self.config.mud_url.as_deref(),
                masa_url: self.config.masa_url.as_deref(),
            },
            &key,
            &random_serial()?,
            now,
        )?;
        let identity = Identity::new(
            idevid,
            self.root.cert_der().to_vec(),
            self.masa_cert.clone(),
            self.product(),
            now,
        )?;
        Birth::new(identity, key)
    }

    /// Certifies a key the device made itself (in its secure element, where it stays): the
    /// CSR's self-signature proves the device holds the key, and its subject serialNumber is
    /// the serial the IDevID will carry. The factory line is the trusted channel between the
    /// device and this call. Returns the device's identity (certificates only).
    pub fn certify(&self, csr: &[u8], now: u64) -> Result<Identity, CertError> {
        let csr = crate::csr::parse_csr(csr)?;
        validate_serial(&csr.serial)?;
        let subject = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki_der)?;
        let hw_type = self.config.hw_type_oid()?;
        let idevid = issue_idevid(
            &self.root,
            &IdevidProfile {
                serial: &csr.serial,
                manufacturer: &self.config.name,
                hw_type: &hw_type,
                mud_url: self.config.mud_url.as_deref(),
                masa_url: self.config.masa_url.as_deref(),
            },
            &subject,
            &random_serial()?,
            now,
        )?;
        Identity::new(
            idevid,
            self.root.cert_der().to_vec(),
            self.masa_cert.clone(),
            self.product(),
            now,
        )
    }

    /// Signs a nonceless voucher for `serial`, pinning `owner_ca` (DER), valid until
    /// `expires_on`: the kind an owner imports in bulk ahead of time.
    pub fn voucher(
        &self,
        serial: &str,
        owner_ca: &[u8],
        now: u64,
        expires_on: u64,
    ) -> Result<Vec<u8>, CertError> {
        self.voucher_in(Encoding::Cose, serial, owner_ca, now, expires_on)
    }

    /// [`Manufacturer::voucher`] in the given encoding: CMS-signed JSON (RFC 8366) for BRSKI
    /// pledges and tools such as `openssl cms -verify`, COSE for our agent.
    pub fn voucher_in(
        &self,
        encoding: Encoding,
        serial: &str,
        owner_ca: &[u8],
        now: u64,
        expires_on: u64,
    ) -> Result<Vec<u8>, CertError> {
        validate_serial(serial)?;
        CertInfo::parse(owner_ca)?;
        let issuer = CertInfo::parse(self.root.cert_der())?.subject_key_id;
        let voucher = Voucher {
            created_on: now,
            expires_on: Some(expires_on),
            assertion: Assertion::Verified,
            serial_number: serial.to_string(),
            idevid_issuer: issuer,
            pinned_domain_cert: owner_ca.to_vec(),
            nonce: None,
        };
        crate::brski::sign_voucher(&voucher, encoding, &self.masa_key, &self.masa_cert, now)
    }

    /// As a MASA (RFC 8995 5.5): a voucher bound to the device's nonce, pinning `owner_ca`,
    /// for the voucher request `signed_request` that the device presenting `idevid` signed. The
    /// IDevID must be one of this manufacturer's, and the request its own. Such a voucher is
    /// fresh by its nonce, so a device without a trustworthy clock can take its time from it.
    pub fn nonced_voucher(
        &self,
        idevid: &[u8],
        signed_request: &[u8],
        owner_ca: &[u8],
        now: u64,
    ) -> Result<Vec<u8>, CertError> {
        crate::chain::verify(
            idevid,
            &[],
            &[self.root.cert_der().to_vec()],
            now,
            crate::chain::Usage::ClientAuth,
        )?;
        let info = CertInfo::parse(idevid)?;
        let request = crate::brski::open_request(signed_request, &info.public_key)
            .map_err(|e| CertError::Profile(format!("voucher request: {e}")))?;
        let serial = info.device_serial()?;
        if request.serial_number != serial || request.nonce.is_empty() {
            return Err(CertError::Profile(format!(
                "a voucher request for {:?} with a nonce of {} bytes, from the IDevID of {serial:?}",
                request.serial_number,
                request.nonce.len()
            )));
        }
        CertInfo::parse(owner_ca)?;
        let voucher = Voucher {
            created_on: now,
            expires_on: None,
            assertion: Assertion::Proximity,
            serial_number: serial.to_string(),
            idevid_issuer: CertInfo::parse(self.root.cert_der())?.subject_key_id,
            pinned_domain_cert: owner_ca.to_vec(),
            nonce: Some(request.nonce),
        };
        // Answered in the request's own encoding.
        let encoding = Encoding::of(signed_request);
        crate::brski::sign_voucher(&voucher, encoding, &self.masa_key, &self.masa_cert, now)
    }

    /// What devices of this manufacturer check firmware against.
    pub fn product(&self) -> crate::identity::Product {
        crate::identity::Product {
            vendor_id: self.config.name.clone(),
            class_id: self.config.model.clone(),
            firmware_key: self.firmware_key.public_key(),
        }
    }

    /// Signs a firmware manifest for `image` (the vendor and class are this manufacturer's
    /// unless `class_id` names another model).
    pub fn sign_firmware(
        &self,
        image: &[u8],
        release: &FirmwareRelease<'_>,
        now: u64,
    ) -> Result<Vec<u8>, CertError> {
        let mut manifest = protocol::manifest::Manifest::for_image(image).build(
            &self.config.name,
            release.class_id.unwrap_or(&self.config.model),
            release.sequence,
            release.version,
            now,
        );
        manifest.expires_on = release.expires_on;
        manifest.sbom = release.sbom.clone();
        manifest.support_ends_on = release.support_ends_on;
        Ok(manifest.sign(&self.firmware_key)?)
    }

    /// A TLS server certificate for the MASA under `names`, issued by the root (which
    /// registrars trust already, for IDevIDs), valid a year, with a fresh key.
    pub fn masa_tls(
        &self,
        names: &[String],
        now: u64,
    ) -> Result<(Vec<Vec<u8>>, KeyPair), CertError> {
        let key = KeyPair::generate(KeyKind::P256)?;
        let cert = crate::profile::issue_registrar(
            &self.root,
            &self.config.name,
            names,
            &key,
            Validity::starting(now, 365 * 86_400),
            &random_serial()?,
        )?;
        Ok((vec![cert, self.root.cert_der().to_vec()], key))
    }

    /// The voucher-signing key, for tests that need a voucher with chosen fields.
    pub fn masa_key(&self) -> &KeyPair {
        &self.masa_key
    }
}
