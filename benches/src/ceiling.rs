//! The ceiling a phase's rate and the server's CPU are compared with: the cryptography each
//! operation cannot do without, timed on this machine. The criterion ceiling bench and the
//! fleet simulator (which times it again in every run, before its phases, so that a phase and
//! its ceiling share the machine's mood) both use these.
//!
//! What each side must compute per operation:
//! - a mutual-TLS handshake: timed by the simulator against the real server ([`Cost`] per
//!   side), since it is quinn's and rustls's work, not ours;
//! - the voucher: the device signs its voucher request and verifies the voucher; the server
//!   verifies the voucher request;
//! - the enrollment: the device makes a key and a CSR and verifies its new certificate's
//!   chain; the server checks the CSR and issues the certificate;
//! - an image: the device verifies the manifest, hashes every byte and decrypts it off the
//!   wire; the server encrypts it onto the wire (AES-128-GCM, the suite devices use);
//! - a wipe attestation: the device signs it, the server verifies it.

use std::time::Instant;

use certs::ca::random_serial;
use certs::factory::{FirmwareRelease, Manufacturer};
use certs::{Ca, KeyKind, KeyPair, unix_now};
use protocol::attestation::{WipeAttestation, WipeMethod};
use protocol::manifest::Manifest;
use protocol::voucher::{Assertion, Voucher, VoucherRequest};
use serde::Serialize;

/// CPU time of one operation on each side, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cost {
    /// The server's share.
    pub server_ms: f64,
    /// The device's share.
    pub device_ms: f64,
}

impl Cost {
    /// Both sides together.
    pub fn both_ms(&self) -> f64 {
        self.server_ms + self.device_ms
    }

    /// To the microsecond, for reports.
    pub fn rounded(self) -> Cost {
        let us = |ms: f64| (ms * 1000.0).round() / 1000.0;
        Cost {
            server_ms: us(self.server_ms),
            device_ms: us(self.device_ms),
        }
    }

    /// `self` `n` times plus `other`.
    pub fn times_plus(self, n: f64, other: Cost) -> Cost {
        Cost {
            server_ms: self.server_ms * n + other.server_ms,
            device_ms: self.device_ms * n + other.device_ms,
        }
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, other: Cost) -> Cost {
        self.times_plus(1.0, other)
    }
}

/// The cryptography of one device's lifecycle, ready to run on either side.
pub struct LifecycleCrypto {
    serial: String,
    device: KeyPair,
    owner: Ca,
    masa: protocol::keys::PublicKey,
    voucher: Vec<u8>,
    request: VoucherRequest,
    signed_request: Vec<u8>,
    manifest: Vec<u8>,
    firmware_key: protocol::keys::PublicKey,
    image: Vec<u8>,
    /// The packet key the image travels under (expanded once, as a connection does).
    aead: ring::aead::LessSafeKey,
    attestation: WipeAttestation,
    signed_attestation: Vec<u8>,
    csr: Vec<u8>,
    ldevid: Vec<u8>,
}

/// The bytes timed per image: one MiB.
pub const IMAGE_BYTES: usize = 1024 * 1024;

impl LifecycleCrypto {
    /// Everything one device's operations need, made once (signing keys, a voucher, a
    /// manifest, a CSR and its certificate).
    pub fn new(manufacturer: &Manufacturer) -> anyhow::Result<LifecycleCrypto> {
        let now = unix_now();
        let serial = "SN-CEILING".to_string();
        let birth = manufacturer.mint(&serial, KeyKind::P256, now)?;
        let owner = Ca::root(
            &certs::CaName {
                organization: "Ceiling".into(),
                common_name: "Ceiling Root".into(),
            },
            KeyPair::generate(KeyKind::P256)?,
            certs::Validity::starting(now, 86_400),
            &random_serial()?,
        )?;
        let masa = certs::CertInfo::parse(manufacturer.masa_cert())?.public_key;
        let voucher = manufacturer.voucher(&serial, owner.cert_der(), now, now + 3600)?;
        let request = VoucherRequest {
            created_on: now,
            assertion: Assertion::Proximity,
            serial_number: serial.clone(),
            nonce: vec![1; 16],
            proximity_registrar_cert: owner.cert_der().to_vec(),
            session_binding: vec![2; 32],
        };
        let signed_request = request.sign(&birth.key)?;
        let image = vec![7u8; IMAGE_BYTES];
        let manifest =
            manufacturer.sign_firmware(&image, &FirmwareRelease::new("1.0.1", 2), now)?;
        let attestation = WipeAttestation {
            serial: serial.clone(),
            manufacturer: "Ceiling".into(),
            model: "sensor-1".into(),
            firmware_version: "1.0.0".into(),
            agent_version: "0.1.0".into(),
            nonce: vec![1; 32],
            method: WipeMethod::PurgeCryptographicErase,
            targets: Vec::new(),
            started_on: now,
            finished_on: now,
            exported: None,
        };
        let signed_attestation = attestation.sign(&birth.key)?;
        let mut crypto = LifecycleCrypto {
            serial,
            device: birth.key,
            owner,
            masa,
            voucher,
            request,
            signed_request,
            manifest,
            firmware_key: manufacturer.firmware_key().public_key(),
            image,
            aead: aead_key()?,
            attestation,
            signed_attestation,
            csr: Vec::new(),
            ldevid: Vec::new(),
        };
        crypto.csr = crypto.device_csr()?;
        crypto.ldevid = crypto.server_enroll()?;
        Ok(crypto)
    }

    /// The device's side of the voucher: it signs its request and verifies the voucher.
    pub fn device_voucher(&self) -> anyhow::Result<()> {
        self.request.sign(&self.device)?;
        Voucher::open(&self.voucher, &self.masa)?;
        Ok(())
    }

    /// The server's side of the voucher: it verifies the device's request.
    pub fn server_voucher(&self) -> anyhow::Result<()> {
        VoucherRequest::open(&self.signed_request, &self.device.public_key())?;
        Ok(())
    }

    fn device_csr(&self) -> anyhow::Result<Vec<u8>> {
        let key = KeyPair::generate(KeyKind::P256)?;
        Ok(certs::csr::build_csr(&self.serial, &key, &[2; 32])?)
    }

    /// The device's side of an enrollment: a new key and its CSR, then the new certificate's
    /// chain verified.
    pub fn device_enroll(&self) -> anyhow::Result<()> {
        self.device_csr()?;
        certs::chain::verify(
            &self.ldevid,
            &[],
            &[self.owner.cert_der().to_vec()],
            unix_now(),
            certs::chain::Usage::ClientAuth,
        )?;
        Ok(())
    }

    /// The server's side of an enrollment: the CSR checked, the certificate issued.
    pub fn server_enroll(&self) -> anyhow::Result<Vec<u8>> {
        let checked = certs::csr::check_csr(
            &self.csr,
            &certs::csr::CsrPolicy {
                serial: &self.serial,
                binding: &[2; 32],
                binding_required: true,
                forbidden_keys: &[],
            },
        )?;
        Ok(certs::profile::issue_ldevid(
            &self.owner,
            &certs::profile::LdevidProfile {
                serial: &self.serial,
                common_name: &self.serial,
                organization: "Ceiling",
                crl_url: None,
            },
            &checked.spki_der,
            certs::Validity::starting(unix_now(), 86_400),
            &random_serial()?,
        )?)
    }

    /// The device's side of one MiB of image: manifest verified, bytes hashed and decrypted.
    pub fn device_image(&mut self) -> anyhow::Result<()> {
        Manifest::open(&self.manifest, &self.firmware_key)?;
        protocol::manifest::sha256(&self.image);
        let tag = seal(&self.aead, &mut self.image)?;
        open(&self.aead, &mut self.image, tag)
    }

    /// The server's side of one MiB of image: the bytes encrypted.
    pub fn server_image(&mut self) -> anyhow::Result<()> {
        seal(&self.aead, &mut self.image).map(|_| ())
    }

    /// The device signs a wipe attestation.
    pub fn device_attestation(&self) -> anyhow::Result<()> {
        self.attestation.sign(&self.device)?;
        Ok(())
    }

    /// The server verifies a wipe attestation.
    pub fn server_attestation(&self) -> anyhow::Result<()> {
        WipeAttestation::open(&self.signed_attestation, &self.device.public_key())?;
        Ok(())
    }
}

fn aead_key() -> anyhow::Result<ring::aead::LessSafeKey> {
    let key = ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &[9; 16])
        .map_err(|_| anyhow::anyhow!("AES key"))?;
    Ok(ring::aead::LessSafeKey::new(key))
}

fn seal(key: &ring::aead::LessSafeKey, bytes: &mut [u8]) -> anyhow::Result<ring::aead::Tag> {
    let nonce = ring::aead::Nonce::assume_unique_for_key([0; 12]);
    key.seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), bytes)
        .map_err(|_| anyhow::anyhow!("AES-GCM seal"))
}

fn open(
    key: &ring::aead::LessSafeKey,
    bytes: &mut Vec<u8>,
    tag: ring::aead::Tag,
) -> anyhow::Result<()> {
    let nonce = ring::aead::Nonce::assume_unique_for_key([0; 12]);
    bytes.extend_from_slice(tag.as_ref());
    let result = key
        .open_in_place(nonce, ring::aead::Aad::empty(), bytes)
        .map(|_| ())
        .map_err(|_| anyhow::anyhow!("AES-GCM open"));
    bytes.truncate(bytes.len() - tag.as_ref().len());
    result
}

/// Mean wall time of `f` over `n` runs on this thread, milliseconds (after one warm-up run).
pub fn time_ms(n: u32, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let started = Instant::now();
    for _ in 0..n {
        f()?;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / f64::from(n.max(1)))
}

/// The costs of everything but the handshake, timed on this thread (run it while the machine
/// is otherwise idle).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CryptoCosts {
    /// Voucher request and voucher.
    pub voucher: Cost,
    /// CSR and certificate.
    pub enroll: Cost,
    /// One MiB of image with its manifest.
    pub image_mib: Cost,
    /// A wipe attestation.
    pub attestation: Cost,
}

impl CryptoCosts {
    /// Times each operation `n` times.
    pub fn measure(manufacturer: &Manufacturer, n: u32) -> anyhow::Result<CryptoCosts> {
        let mut c = LifecycleCrypto::new(manufacturer)?;
        let cost = |server_ms, device_ms| {
            Cost {
                server_ms,
                device_ms,
            }
            .rounded()
        };
        Ok(CryptoCosts {
            voucher: cost(
                time_ms(n, || c.server_voucher())?,
                time_ms(n, || c.device_voucher())?,
            ),
            enroll: cost(
                time_ms(n, || c.server_enroll().map(|_| ()))?,
                time_ms(n, || c.device_enroll())?,
            ),
            image_mib: cost(
                time_ms(n / 20 + 1, || c.server_image())?,
                time_ms(n / 20 + 1, || c.device_image())?,
            ),
            attestation: cost(
                time_ms(n, || c.server_attestation())?,
                time_ms(n, || c.device_attestation())?,
            ),
        })
    }
}
