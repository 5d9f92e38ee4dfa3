//! The owner root's generations on disk: `ca/roots.json` lists them, each with its certificate
//! and key (`ca/owner-root-N.pem`, `.key`), and the cross-certificates between consecutive
//! ones (`ca/owner-root-N-by-M.pem`). A new root is made beside the one in force and linked to
//! it both ways (RFC 7030 4.1.3: NewWithOld, OldWithNew); a retired root keeps its
//! certificate (old certificates still name it) and loses its key.
//!
//! Data directories made before root generations have one root, `ca/owner-root.pem` and
//! `ca/owner-root.key`, and no `ca/roots.json`: that is generation 1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use certs::ca::{BACKDATE, random_serial};
use certs::{Ca, CaName, CertInfo, KeyKind, KeyPair, Validity, files};
use serde::{Deserialize, Serialize};

use crate::config::{Config, layout};
use crate::error::{Context, Error, Result};

/// Owner root lifetime: 20 years.
const ROOT_LIFETIME: u64 = 20 * 365 * 86_400;
/// What the cross-certificates outlive the longest a rollover should take by: 30 days.
const LINK_MARGIN: u64 = 30 * 86_400;

/// One owner root generation in `ca/roots.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RootGeneration {
    generation: u32,
    /// When it retired: nothing chained to it any more, its key was deleted.
    #[serde(default)]
    retired_at: Option<u64>,
}

/// The owner roots as loaded.
pub(super) struct Roots {
    /// Every root's certificate, by generation (retired ones too: old certificates name them).
    pub(super) all: BTreeMap<u32, Vec<u8>>,
    /// The generations in force, oldest first.
    pub(super) in_force: Vec<u32>,
    /// The cross-certificates between consecutive roots in force.
    pub(super) links: Vec<Vec<u8>>,
}

impl Roots {
    /// The certificates of the roots in force, oldest first.
    pub(super) fn trusted(&self) -> Vec<Vec<u8>> {
        self.in_force
            .iter()
            .filter_map(|n| self.all.get(n).cloned())
            .collect()
    }
}

fn read_generations(dir: &Path) -> Result<Vec<RootGeneration>> {
    let path = dir.join(layout::ROOT_GENERATIONS);
    if !path.exists() {
        return Ok(vec![RootGeneration {
            generation: 1,
            retired_at: None,
        }]);
    }
    let generations: Vec<RootGeneration> =
        serde_json::from_slice(&files::read_limited(&path, 1 << 20)?)
            .with_context(|| format!("reading {}", path.display()))?;
    if !generations.iter().any(|g| g.retired_at.is_none()) {
        return Err(Error::Config(format!(
            "{} lists no owner root in force",
            path.display()
        )));
    }
    Ok(generations)
}

fn write_generations(dir: &Path, generations: &[RootGeneration]) -> Result<()> {
    files::write_private(
        &dir.join(layout::ROOT_GENERATIONS),
        &serde_json::to_vec_pretty(generations)?,
    )?;
    Ok(())
}

fn cert_path(dir: &Path, n: u32) -> PathBuf {
    let path = dir.join(layout::root_cert(n));
    if n == 1 && !path.exists() {
        return dir.join(layout::OWNER_ROOT);
    }
    path
}

fn key_path(dir: &Path, n: u32) -> PathBuf {
    let path = dir.join(layout::root_key(n));
    if n == 1 && !path.exists() {
        return dir.join(layout::LEGACY_ROOT_KEY);
    }
    path
}

/// The certificate of root generation `n`.
pub(super) fn cert(dir: &Path, n: u32) -> Result<Vec<u8>> {
    Ok(files::read_cert(&cert_path(dir, n))?)
}

/// Root generation `n` with its key, to sign with. The key may be kept offline: it is needed
/// only to start a root or issuing CA rollover.
pub(super) fn signer(dir: &Path, n: u32) -> Result<Ca> {
    let cert = files::read_cert(&cert_path(dir, n))?;
    let key = files::read_key(&key_path(dir, n)).with_context(|| {
        format!(
            "the key of owner root {n} is needed here (bring {} back online)",
            layout::root_key(n)
        )
    })?;
    Ok(Ca::from_parts(cert, key)?)
}

/// The newest root in force: the one new issuing CAs go under.
pub(super) fn newest(dir: &Path) -> Result<u32> {
    Ok(read_generations(dir)?
        .iter()
        .filter(|g| g.retired_at.is_none())
        .map(|g| g.generation)
        .max()
        .unwrap_or(1))
}

fn new_root(config: &Config, n: u32, now: u64) -> Result<Ca> {
    let org = config.policy.organization.clone();
    let common_name = match n {
        1 => format!("{org} Owner Root CA"),
        n => format!("{org} Owner Root CA {n}"),
    };
    Ok(Ca::root(
        &CaName {
            organization: org,
            common_name,
        },
        KeyPair::generate(KeyKind::P256)?,
        Validity::starting(now, ROOT_LIFETIME),
        &random_serial()?,
    )?)
}

fn write_root(dir: &Path, n: u32, root: &Ca) -> Result<()> {
    files::write_private(
        &dir.join(layout::root_cert(n)),
        files::cert_pem(root.cert_der()).as_bytes(),
    )?;
    files::write_secret(
        &dir.join(layout::root_key(n)),
        root.key().to_pem().as_bytes(),
    )?;
    Ok(())
}

/// Writes `ca/owner-roots.pem`, the roots in force, for operators and relying parties.
fn write_bundle(dir: &Path) -> Result<()> {
    let roots = load(dir)?;
    let trusted = roots.trusted();
    files::write_private(
        &dir.join(layout::OWNER_ROOTS),
        files::certs_pem(trusted.iter().map(Vec::as_slice)).as_bytes(),
    )?;
    Ok(())
}

/// The first owner root of a new data directory.
pub(super) fn create_first(dir: &Path, config: &Config, now: u64) -> Result<Ca> {
    let root = new_root(config, 1, now)?;
    write_root(dir, 1, &root)?;
    files::write_private(
        &dir.join(layout::OWNER_ROOT),
        files::cert_pem(root.cert_der()).as_bytes(),
    )?;
    write_generations(
        dir,
        &[RootGeneration {
            generation: 1,
            retired_at: None,
        }],
    )?;
    write_bundle(dir)?;
    Ok(root)
}

/// Makes root generation `n` beside the newest one in force and links the two both ways, if
/// it is not made yet (so an interrupted start can be finished). Needs the key of the root in
/// force. The list is written last: until then the new root does not exist.
pub fn begin(dir: &Path, config: &Config, n: u32, now: u64) -> Result<()> {
    let mut generations = read_generations(dir)?;
    if generations.iter().any(|g| g.generation >= n) {
        return Ok(());
    }
    let old_n = newest(dir)?;
    let old = signer(dir, old_n)?;
    let new = new_root(config, n, now)?;
    // The links are needed until the old root retires: at most the wait for the devices to
    // take the new root, then one LDevID lifetime (every certificate under the old root has
    // expired by then). Not longer: OldWithNew lets a chain signed with the old root's key
    // reach the new root for as long as it is valid.
    let needed = now
        .saturating_add(config.policy.root_distribution_wait)
        .saturating_add(config.policy.ldevid_lifetime)
        .saturating_add(LINK_MARGIN);
    let expires = CertInfo::parse(old.cert_der())?
        .not_after
        .min(CertInfo::parse(new.cert_der())?.not_after)
        .min(needed);
    let links = Validity {
        not_before: now.saturating_sub(BACKDATE),
        not_after: expires,
    };
    let new_with_old = old.cross_certify(&new, links, &random_serial()?)?;
    let old_with_new = new.cross_certify(&old, links, &random_serial()?)?;
    write_root(dir, n, &new)?;
    for (path, der) in [
        (layout::root_link(n, old_n), &new_with_old),
        (layout::root_link(old_n, n), &old_with_new),
    ] {
        files::write_private(&dir.join(path), files::cert_pem(der).as_bytes())?;
    }
    let first = dir.join(layout::root_cert(1));
    if !first.exists() {
        // A directory of before root generations: give root 1 its generation's name.
        std::fs::copy(cert_path(dir, 1), &first).map_err(|e| Error::io(&first, e))?;
    }
    generations.push(RootGeneration {
        generation: n,
        retired_at: None,
    });
    write_generations(dir, &generations)?;
    write_bundle(dir)
}

/// Retires root generation `n`: it is no longer in force, and its key is deleted (nothing
/// may be signed with it again). Doing it again changes nothing.
pub fn retire(dir: &Path, n: u32, now: u64) -> Result<()> {
    let mut generations = read_generations(dir)?;
    if let Some(g) = generations.iter_mut().find(|g| g.generation == n) {
        g.retired_at.get_or_insert(now);
    }
    write_generations(dir, &generations)?;
    for key in [dir.join(layout::root_key(n)), key_path(dir, n)] {
        match std::fs::remove_file(&key) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&key, e)),
        }
    }
    write_bundle(dir)
}

/// Reads every root generation and the links between those in force.
pub(super) fn load(dir: &Path) -> Result<Roots> {
    let generations = read_generations(dir)?;
    let mut all = BTreeMap::new();
    for g in &generations {
        all.insert(
            g.generation,
            files::read_cert(&cert_path(dir, g.generation))?,
        );
    }
    let mut in_force: Vec<u32> = generations
        .iter()
        .filter(|g| g.retired_at.is_none())
        .map(|g| g.generation)
        .collect();
    in_force.sort_unstable();
    let mut links = Vec::new();
    for pair in in_force.windows(2) {
        let (old, new) = (pair[0], pair[1]);
        for path in [layout::root_link(new, old), layout::root_link(old, new)] {
            links.push(files::read_cert(&dir.join(path))?);
        }
    }
    Ok(Roots {
        all,
        in_force,
        links,
    })
}

/// The NewWithOld link that lets a peer trusting only root `previous` reach root `n`.
pub(super) fn link_to(dir: &Path, n: u32, previous: u32) -> Result<Vec<u8>> {
    Ok(files::read_cert(&dir.join(layout::root_link(n, previous)))?)
}
