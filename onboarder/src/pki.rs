//! The owner's PKI on disk: created by `onboarder init`, loaded by `onboarder serve`.

use std::path::Path;

use anyhow::{Context, Result};
use certs::ca::random_serial;
use certs::profile::issue_registrar;
use certs::{Ca, CaName, CertInfo, KeyKind, KeyPair, Validity, files};

use crate::config::{Config, layout};
use crate::core::Registrar;

/// Owner root lifetime: 20 years.
const ROOT_LIFETIME: u64 = 20 * 365 * 86_400;
/// Issuing CA lifetime: 5 years.
const ISSUING_LIFETIME: u64 = 5 * 365 * 86_400;
/// Registrar certificate lifetime: 1 year.
const SERVER_LIFETIME: u64 = 365 * 86_400;

/// Everything the QUIC listener and the core need from the PKI.
pub struct Pki {
    /// The core's registrar context.
    pub registrar: Registrar,
    /// Owner root certificate, DER.
    pub owner_root: Vec<u8>,
    /// Registrar certificate chain (leaf, issuing CA), DER.
    pub server_chain: Vec<Vec<u8>>,
    /// Registrar private key.
    pub server_key: KeyPair,
}

/// Creates the owner PKI and the admin token in `dir`.
pub fn init(dir: &Path, config: &Config, now: u64) -> Result<()> {
    anyhow::ensure!(
        !dir.join(layout::CONFIG).exists(),
        "{} already holds an onboarder",
        dir.display()
    );
    let org = &config.policy.organization;
    let root = Ca::root(
        &CaName {
            organization: org.clone(),
            common_name: format!("{org} Owner Root CA"),
        },
        KeyPair::generate(KeyKind::P256)?,
        Validity::starting(now, ROOT_LIFETIME),
        &random_serial()?,
    )?;
    let issuing = root.intermediate(
        &CaName {
            organization: org.clone(),
            common_name: format!("{org} Issuing CA 1"),
        },
        KeyPair::generate(KeyKind::P256)?,
        Validity::starting(now, ISSUING_LIFETIME),
        &random_serial()?,
    )?;
    let server_key = KeyPair::generate(KeyKind::P256)?;
    let server = issue_registrar(
        &issuing,
        org,
        &config.server_names,
        &server_key,
        Validity::starting(now, SERVER_LIFETIME),
        &random_serial()?,
    )?;
    files::write_public(
        &dir.join(layout::OWNER_ROOT),
        files::cert_pem(root.cert_der()).as_bytes(),
    )?;
    files::write_secret(
        &dir.join(layout::OWNER_ROOT_KEY),
        root.key().to_pem().as_bytes(),
    )?;
    files::write_public(
        &dir.join(layout::ISSUING_CA),
        files::cert_pem(issuing.cert_der()).as_bytes(),
    )?;
    files::write_secret(
        &dir.join(layout::ISSUING_CA_KEY),
        issuing.key().to_pem().as_bytes(),
    )?;
    files::write_public(
        &dir.join(layout::CHAIN),
        files::certs_pem([issuing.cert_der(), root.cert_der()]).as_bytes(),
    )?;
    files::write_public(
        &dir.join(layout::SERVER_CERT),
        files::certs_pem([server.as_slice(), issuing.cert_der()]).as_bytes(),
    )?;
    files::write_secret(
        &dir.join(layout::SERVER_KEY),
        server_key.to_pem().as_bytes(),
    )?;
    files::write_secret(&dir.join(layout::TOKEN), new_token()?.as_bytes())?;
    // Written last: its presence marks a complete initialisation.
    config.save(dir)?;
    Ok(())
}

fn new_token() -> Result<String> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for the admin token"))?;
    Ok(certs::inspect::hex(&bytes))
}

/// Loads the PKI from `dir`.
pub fn load(dir: &Path, config: &Config) -> Result<Pki> {
    let owner_root = files::read_cert(&dir.join(layout::OWNER_ROOT))?;
    let issuing = Ca::from_parts(
        files::read_cert(&dir.join(layout::ISSUING_CA))?,
        files::read_key(&dir.join(layout::ISSUING_CA_KEY))?,
    )
    .context("loading the issuing CA")?;
    let server_chain = files::read_certs(&dir.join(layout::SERVER_CERT))?;
    let server_key = files::read_key(&dir.join(layout::SERVER_KEY))?;
    let leaf = CertInfo::parse(&server_chain[0])?;
    anyhow::ensure!(
        leaf.public_key == server_key.public_key(),
        "{} does not belong to {}",
        layout::SERVER_KEY,
        layout::SERVER_CERT
    );
    let issuing_info = CertInfo::parse(issuing.cert_der())?;
    let issuer_key_ids = issuing_info.subject_key_id.into_iter().collect();
    let chain = vec![issuing.cert_der().to_vec(), owner_root.clone()];
    Ok(Pki {
        registrar: Registrar {
            registrar_cert: server_chain[0].clone(),
            issuing,
            chain,
            issuer_key_ids,
            policy: config.policy.clone(),
        },
        owner_root,
        server_chain,
        server_key,
    })
}

/// Reads the admin token.
pub fn token(dir: &Path) -> Result<String> {
    let bytes = files::read_limited(&dir.join(layout::TOKEN), 1024)?;
    Ok(String::from_utf8(bytes)
        .context("admin token is not text")?
        .trim()
        .to_string())
}
