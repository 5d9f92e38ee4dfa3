//! The owner's PKI on disk: created by `onboarder init`, loaded by `onboarder serve`, and
//! extended by `onboarder ca rollover` (a new issuing CA) and `onboarder ca root-rollover` (a
//! new owner root, in [`roots`]).

mod roots;

pub use roots::{begin as begin_root, retire as retire_root};

use std::path::Path;

use crate::error::{Context, Error, Result};
use certs::ca::random_serial;
use certs::profile::issue_registrar;
use certs::{Ca, CaName, CertInfo, KeyKind, KeyPair, Validity, files};
use serde::{Deserialize, Serialize};

use crate::config::{Config, layout};
use crate::core::{IssuingCa, OwnerRoots, Registrar};
/// Issuing CA lifetime: 5 years.
const ISSUING_LIFETIME: u64 = 5 * 365 * 86_400;
/// Registrar certificate lifetime: 1 year.
const SERVER_LIFETIME: u64 = 365 * 86_400;

/// Everything the QUIC listener and the core need from the PKI.
pub struct Pki {
    /// The core's registrar context.
    pub registrar: Registrar,
    /// Registrar certificate chain (leaf, issuing CA, and during a root rollover the
    /// NewWithOld link for devices that trust only the old root), DER.
    pub server_chain: Vec<Vec<u8>>,
    /// Registrar private key.
    pub server_key: KeyPair,
}

/// One issuing CA generation in `ca/issuing.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Generation {
    generation: u32,
    #[serde(default)]
    retired_at: Option<u64>,
    /// The owner root generation it is under.
    #[serde(default = "first_root")]
    root: u32,
}

fn first_root() -> u32 {
    1
}

fn owner_name(config: &Config) -> String {
    config.policy.organization.clone()
}

fn new_issuing(root: &Ca, config: &Config, generation: u32, now: u64) -> Result<Ca> {
    let org = owner_name(config);
    Ok(root.intermediate(
        &CaName {
            organization: org.clone(),
            common_name: format!("{org} Issuing CA {generation}"),
        },
        KeyPair::generate(KeyKind::P256)?,
        Validity::starting(now, ISSUING_LIFETIME),
        &random_serial()?,
    )?)
}

/// Writes generation `n` of the issuing CA and makes it the current one in the copies.
fn write_issuing(dir: &Path, n: u32, ca: &Ca, root: &[u8]) -> Result<()> {
    files::write_private(
        &dir.join(layout::issuing_ca(n)),
        files::cert_pem(ca.cert_der()).as_bytes(),
    )?;
    files::write_secret(
        &dir.join(layout::issuing_ca_key(n)),
        ca.key().to_pem().as_bytes(),
    )?;
    files::write_private(
        &dir.join(layout::ISSUING_CA),
        files::cert_pem(ca.cert_der()).as_bytes(),
    )?;
    files::write_private(
        &dir.join(layout::CHAIN),
        files::certs_pem([ca.cert_der(), root]).as_bytes(),
    )?;
    Ok(())
}

fn write_generations(dir: &Path, generations: &[Generation]) -> Result<()> {
    files::write_private(
        &dir.join(layout::ISSUING_GENERATIONS),
        &serde_json::to_vec_pretty(generations)?,
    )?;
    Ok(())
}

fn read_generations(dir: &Path) -> Result<Vec<Generation>> {
    let path = dir.join(layout::ISSUING_GENERATIONS);
    let generations: Vec<Generation> =
        serde_json::from_slice(&files::read_limited(&path, 1 << 20)?)
            .with_context(|| format!("reading {}", path.display()))?;
    if generations.is_empty() {
        return Err(Error::Config(format!(
            "{} lists no issuing CA",
            path.display()
        )));
    }
    Ok(generations)
}

/// Creates the owner PKI, the store key and the admin token in `dir`, all at once: everything
/// is made in a private staging directory beside `dir` and moved in with one rename, so a
/// failure leaves nothing behind. `dir` must not exist or be empty; it ends up 0700.
pub fn init(dir: &Path, config: &Config, now: u64) -> Result<()> {
    config.check()?;
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        return Err(Error::Config(format!(
            "{} already exists and is not empty",
            dir.display()
        )));
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".onboarder-init-")
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    files::create_private_dir(staging.path())?;
    write_new(staging.path(), config, now)?;
    let staged = staging.keep();
    let moved = (|| {
        if dir.exists() {
            std::fs::remove_dir(dir)?;
        }
        std::fs::rename(&staged, dir)
    })();
    if let Err(e) = moved {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(Error::io(dir, e));
    }
    Ok(())
}

fn write_new(dir: &Path, config: &Config, now: u64) -> Result<()> {
    let root = roots::create_first(dir, config, now)?;
    let issuing = new_issuing(&root, config, 1, now)?;
    write_issuing(dir, 1, &issuing, root.cert_der())?;
    write_generations(
        dir,
        &[Generation {
            generation: 1,
            retired_at: None,
            root: 1,
        }],
    )?;
    write_registrar(dir, config, &issuing, now)?;
    files::write_secret(&dir.join(layout::TOKEN), new_token()?.as_bytes())?;
    crate::store::seal::SealingKey::load_or_create(&dir.join(layout::STORE_KEY))?;
    // Made now rather than at the first start, so that copies of the directory for replicas on
    // other machines share them (a firmware URL signed by one replica opens on another).
    files::secret(&dir.join(layout::URL_KEY), 32)?;
    files::secret(&dir.join(layout::RESET_KEY), 32)?;
    config.save(dir)?;
    Ok(())
}

/// Issues the registrar's TLS certificate under `issuing` with a fresh key, and makes the pair
/// current. The two files cannot be replaced in one atomic step, so the new pair is written
/// beside the old one first and then moved in, key first: a crash between the two moves leaves
/// the new key with `server.pem.next`, which [`load`] finishes moving.
fn write_registrar(dir: &Path, config: &Config, issuing: &Ca, now: u64) -> Result<()> {
    let key = KeyPair::generate(KeyKind::P256)?;
    let cert = issue_registrar(
        issuing,
        &owner_name(config),
        &config.server_names,
        &key,
        Validity::starting(now, SERVER_LIFETIME),
        &random_serial()?,
    )?;
    let (cert_path, key_path) = (dir.join(layout::SERVER_CERT), dir.join(layout::SERVER_KEY));
    let (next_cert, next_key) = (next(&cert_path), next(&key_path));
    files::write_private(
        &next_cert,
        files::certs_pem([cert.as_slice(), issuing.cert_der()]).as_bytes(),
    )?;
    files::write_secret(&next_key, key.to_pem().as_bytes())?;
    std::fs::rename(&next_key, &key_path).map_err(|e| Error::io(&key_path, e))?;
    std::fs::rename(&next_cert, &cert_path).map_err(|e| Error::io(&cert_path, e))?;
    Ok(())
}

fn next(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".next");
    name.into()
}

/// Whether the registrar certificate should be re-issued at `now`: it comes from an issuing
/// CA that is no longer current (after a rollover), or two thirds of its lifetime have passed
/// (the rule devices follow for their LDevIDs).
pub fn registrar_due(pki: &Pki, now: u64) -> Result<bool> {
    let leaf = CertInfo::parse(&pki.server_chain[0])?;
    let current = leaf.authority_key_id.as_deref() == Some(pki.registrar.issuing.key_id.as_slice());
    let renew_at = leaf.not_before + leaf.not_after.saturating_sub(leaf.not_before) / 3 * 2;
    Ok(!current || now >= renew_at)
}

/// Re-issues the registrar certificate of `pki` (loaded from `dir`) under its current issuing
/// CA, with a fresh key.
pub fn renew_registrar(dir: &Path, config: &Config, pki: &Pki, now: u64) -> Result<()> {
    write_registrar(dir, config, &pki.registrar.issuing.ca, now)
}

/// The issuing CA generation in force on disk.
pub fn current_generation(dir: &Path) -> Result<u32> {
    Ok(read_generations(dir)?
        .iter()
        .map(|g| g.generation)
        .max()
        .unwrap_or(0))
}

/// Brings issuing CA generation `target` into force under the newest owner root, if it is not
/// yet: the current one retires (it keeps its key to sign CRLs until its certificates have
/// expired). Needs that root's key. Doing it again for the same target changes nothing, so an
/// interrupted rollover can be finished.
pub fn rollover_to(dir: &Path, config: &Config, target: u32, now: u64) -> Result<()> {
    if current_generation(dir)? >= target {
        return Ok(());
    }
    let root_generation = roots::newest(dir)?;
    let root = roots::signer(dir, root_generation)?;
    let mut generations = read_generations(dir)?;
    let next = target;
    let issuing = new_issuing(&root, config, next, now)?;
    write_issuing(dir, next, &issuing, root.cert_der())?;
    files::write_private(
        &dir.join(layout::OWNER_ROOT),
        files::cert_pem(root.cert_der()).as_bytes(),
    )?;
    for g in &mut generations {
        g.retired_at.get_or_insert(now);
    }
    generations.push(Generation {
        generation: next,
        retired_at: None,
        root: root_generation,
    });
    // Written last: until then the previous generation stays current.
    write_generations(dir, &generations)?;
    Ok(())
}

pub(crate) fn new_token() -> Result<String> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Config("no randomness for the admin token".into()))?;
    Ok(certs::inspect::hex(&bytes))
}

fn load_issuing(dir: &Path, g: &Generation, owner_root: &[u8]) -> Result<IssuingCa> {
    let ca = Ca::from_parts(
        files::read_cert(&dir.join(layout::issuing_ca(g.generation)))?,
        files::read_key(&dir.join(layout::issuing_ca_key(g.generation)))?,
    )
    .with_context(|| format!("loading issuing CA {}", g.generation))?;
    let key_id = CertInfo::parse(ca.cert_der())?
        .subject_key_id
        .ok_or_else(|| {
            Error::Config(format!("issuing CA {} has no key identifier", g.generation))
        })?;
    Ok(IssuingCa {
        generation: g.generation,
        chain: vec![ca.cert_der().to_vec(), owner_root.to_vec()],
        ca,
        key_id,
        retired_at: g.retired_at,
    })
}

/// Loads the PKI from `dir`.
pub fn load(dir: &Path, config: &Config) -> Result<Pki> {
    let roots = roots::load(dir)?;
    let mut generations = read_generations(dir)?;
    generations.sort_by_key(|g| g.generation);
    let mut issuing = generations
        .iter()
        .map(|g| {
            let root = roots.all.get(&g.root).ok_or_else(|| {
                Error::Config(format!(
                    "issuing CA {} is under owner root {}, which is not on file",
                    g.generation, g.root
                ))
            })?;
            load_issuing(dir, g, root)
        })
        .collect::<Result<Vec<_>>>()?;
    let current = issuing
        .pop()
        .ok_or_else(|| Error::Config("no issuing CA".into()))?;
    let (mut server_chain, server_key) = read_registrar(dir)?;
    // Under a new root while the old one is still in force: devices that have not taken the
    // new root yet reach ours through the old one.
    let root_of_current = generations.last().map_or(1, |g| g.root);
    if let Some(previous) = roots
        .in_force
        .iter()
        .copied()
        .filter(|n| *n < root_of_current)
        .max()
    {
        server_chain.push(roots::link_to(dir, root_of_current, previous)?);
    }
    Ok(Pki {
        registrar: Registrar {
            registrar_cert: server_chain[0].clone(),
            previous_registrar_cert: None,
            issuing: current,
            retired: issuing,
            roots: OwnerRoots::new(roots.trusted(), roots.links),
            policy: config.policy.clone(),
        },
        server_chain,
        server_key,
    })
}

/// The certificate of owner root generation `n`, retired or not.
pub fn root_cert(dir: &Path, n: u32) -> Result<Vec<u8>> {
    roots::cert(dir, n)
}

/// The owner root generation in force (the one the issuing CA is under) and the newest one.
pub fn root_generations(dir: &Path) -> Result<(u32, u32)> {
    let generations = read_generations(dir)?;
    let in_force = generations
        .iter()
        .max_by_key(|g| g.generation)
        .map_or(1, |g| g.root);
    Ok((in_force, roots::newest(dir)?))
}

/// Reads the registrar's certificate chain and key, finishing a renewal that a crash
/// interrupted between its two moves (see [`write_registrar`]).
fn read_registrar(dir: &Path) -> Result<(Vec<Vec<u8>>, KeyPair)> {
    let cert_path = dir.join(layout::SERVER_CERT);
    let key = files::read_key(&dir.join(layout::SERVER_KEY))?;
    let belongs = |chain: &[Vec<u8>]| -> Result<bool> {
        let leaf = chain.first().ok_or_else(|| {
            Error::Config(format!("{} holds no certificate", layout::SERVER_CERT))
        })?;
        Ok(CertInfo::parse(leaf)?.public_key == key.public_key())
    };
    let chain = files::read_certs(&cert_path)?;
    if belongs(&chain)? {
        return Ok((chain, key));
    }
    let pending = next(&cert_path);
    if pending.exists() {
        let chain = files::read_certs(&pending)?;
        if belongs(&chain)? {
            std::fs::rename(&pending, &cert_path).map_err(|e| Error::io(&cert_path, e))?;
            return Ok((chain, key));
        }
    }
    Err(Error::Config(format!(
        "{} does not belong to {}",
        layout::SERVER_KEY,
        layout::SERVER_CERT
    )))
}

/// Issues a TLS server certificate for another of the owner's servers (the RADIUS server) under
/// the current issuing CA, with a fresh key: its chain (leaf, issuing CA) and key.
pub fn issue_server(
    dir: &Path,
    config: &Config,
    names: &[String],
    now: u64,
) -> Result<(Vec<Vec<u8>>, KeyPair)> {
    let pki = load(dir, config)?;
    let issuing = &pki.registrar.issuing.ca;
    let key = KeyPair::generate(KeyKind::P256)?;
    let cert = certs::profile::issue_server(
        issuing,
        &owner_name(config),
        names,
        &key,
        Validity::starting(now, SERVER_LIFETIME),
        &random_serial()?,
    )?;
    Ok((vec![cert, issuing.cert_der().to_vec()], key))
}

/// Reads the admin token.
pub fn token(dir: &Path) -> Result<String> {
    let bytes = files::read_limited(&dir.join(layout::TOKEN), 1024)?;
    Ok(String::from_utf8(bytes)
        .map_err(|_| Error::Config("the admin token is not text".into()))?
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_is_made_beside_the_old_linked_to_it_put_in_force_and_retired() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::new("Test Owner");
        let now = certs::unix_now();
        init(dir.path(), &config, now).unwrap();
        let d = dir.path();
        // A directory of before root generations: one root, its key beside it, no list.
        std::fs::remove_file(d.join(layout::ROOT_GENERATIONS)).unwrap();
        std::fs::remove_file(d.join(layout::root_cert(1))).unwrap();
        std::fs::rename(d.join(layout::root_key(1)), d.join(layout::LEGACY_ROOT_KEY)).unwrap();
        let first = load(d, &config).unwrap();
        assert_eq!(first.registrar.roots.trusted.len(), 1);
        let old = first.registrar.roots.trusted[0].clone();

        begin_root(d, &config, 2, now).unwrap();
        let both = load(d, &config).unwrap();
        let new = files::read_cert(&d.join(layout::root_cert(2))).unwrap();
        assert_eq!(both.registrar.roots.trusted, [old.clone(), new.clone()]);
        assert_eq!(both.registrar.roots.links.len(), 2);
        assert_eq!(both.registrar.owner_root(), Some(old.as_slice()));
        assert_eq!(
            both.server_chain.len(),
            2,
            "no link while the CA is under the old root"
        );
        assert_eq!(
            files::read_certs(&d.join(layout::OWNER_ROOTS))
                .unwrap()
                .len(),
            2
        );
        // Again: nothing new.
        begin_root(d, &config, 2, now).unwrap();
        assert_eq!(
            files::read_cert(&d.join(layout::root_cert(2))).unwrap(),
            new
        );
        // The links last as long as the rollover may, not as long as the roots.
        let link = CertInfo::parse(&both.registrar.roots.links[0]).unwrap();
        let p = &config.policy;
        assert!(link.not_after <= now + p.root_distribution_wait + p.ldevid_lifetime + 31 * 86_400);

        // The issuing CA moves under the new root: vouchers pin it, the registrar presents
        // NewWithOld for devices that trust only the old.
        rollover_to(d, &config, 2, now).unwrap();
        let moved = load(d, &config).unwrap();
        assert_eq!(moved.registrar.owner_root(), Some(new.as_slice()));
        assert_eq!(files::read_cert(&d.join(layout::OWNER_ROOT)).unwrap(), new);
        let link = CertInfo::parse(moved.server_chain.last().unwrap()).unwrap();
        assert_eq!(link.subject, CertInfo::parse(&new).unwrap().subject);
        assert_eq!(link.issuer, CertInfo::parse(&old).unwrap().subject);
        assert_eq!(moved.registrar.trusted_generations().count(), 2);

        // Retired: out of force, its key gone, its issuing CA no longer trusted; again is a
        // no-op.
        retire_root(d, 1, now).unwrap();
        retire_root(d, 1, now).unwrap();
        let after = load(d, &config).unwrap();
        assert_eq!(after.registrar.roots.trusted, std::slice::from_ref(&new));
        assert!(after.registrar.roots.links.is_empty());
        assert_eq!(after.server_chain.len(), 2);
        assert!(!d.join(layout::LEGACY_ROOT_KEY).exists());
        assert!(!d.join(layout::root_key(1)).exists());
        assert_eq!(after.registrar.trusted_generations().count(), 1);
        assert_eq!(after.registrar.retired.len(), 1, "it still signs its CRL");
        assert_eq!(
            files::read_certs(&d.join(layout::OWNER_ROOTS)).unwrap(),
            [new]
        );
    }

    #[test]
    fn a_renewal_interrupted_between_its_two_moves_is_finished_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::new("Test Owner");
        let now = certs::unix_now();
        init(dir.path(), &config, now).unwrap();
        let before = load(dir.path(), &config).unwrap();
        assert!(!registrar_due(&before, now).unwrap());
        assert!(registrar_due(&before, now + SERVER_LIFETIME / 3 * 2 + 1).unwrap());

        // The new pair written, the key moved in, then the crash.
        let cert_path = dir.path().join(layout::SERVER_CERT);
        let old_cert = std::fs::read(&cert_path).unwrap();
        renew_registrar(dir.path(), &config, &before, now).unwrap();
        let renewed = std::fs::read(&cert_path).unwrap();
        std::fs::write(next(&cert_path), &renewed).unwrap();
        std::fs::write(&cert_path, &old_cert).unwrap();

        let after = load(dir.path(), &config).unwrap();
        assert_ne!(after.server_chain[0], before.server_chain[0]);
        assert_eq!(after.registrar.registrar_cert, after.server_chain[0]);
        assert_eq!(std::fs::read(&cert_path).unwrap(), renewed);
        assert!(!next(&cert_path).exists());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(layout::SERVER_KEY))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        // A key that matches nothing is refused, not guessed at.
        std::fs::write(&cert_path, &old_cert).unwrap();
        assert!(load(dir.path(), &config).is_err());
    }
}
