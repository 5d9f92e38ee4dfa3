//! Sanitization on the reference file platform (NIST SP 800-88).
//!
//! The device's application data lives in [`Vault`], encrypted from the start with a
//! data-encryption key (AES-256-GCM), so that destroying that key is a cryptographic erase
//! (Purge); the ciphertext files are also overwritten and read back (Clear), and so are the
//! network credentials. Overwriting a file in place is best effort on flash and journaling file
//! systems (the old blocks may survive), which is exactly why the data is encrypted: without the
//! key, whatever survives is noise. The LDevID key is destroyed by the agent itself, last, after
//! the attestation it signs has been delivered; the IDevID stays.
//!
//! ```text
//! STATE/data/dek.key       data-encryption key (0600)
//! STATE/data/NAME.enc      nonce || AES-256-GCM(data)
//! ```

use std::path::{Path, PathBuf};

use protocol::attestation::{WipeMethod, WipedTarget};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::Wiper;
use super::layout;
use super::shred::overwrite_and_remove;
use crate::error::PlatformError;

/// Largest application data item.
const MAX_ITEM: u64 = 64 * 1024 * 1024;

fn err(what: &str) -> impl Fn(std::io::Error) -> PlatformError + '_ {
    move |e| PlatformError::Wipe(format!("{what}: {e}"))
}

/// Application data, encrypted with a data-encryption key.
#[derive(Debug, Clone)]
pub struct Vault {
    dir: PathBuf,
}

impl Vault {
    /// The vault of the state directory `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Vault {
            dir: state_dir.join("data"),
        }
    }

    /// The data key, if there is one, read once. One whose destruction was cut short between
    /// the overwrite and the removal (zeros) is destroyed: its removal is finished here.
    fn stored_key(&self) -> Result<Option<Vec<u8>>, PlatformError> {
        let path = self.dir.join("dek.key");
        if !path.exists() {
            return Ok(None);
        }
        let bytes = certs::files::read_limited(&path, 64)?;
        if bytes.iter().all(|b| *b == 0) {
            overwrite_and_remove(&path)?;
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    fn key(&self) -> Result<LessSafeKey, PlatformError> {
        let bytes = match self.stored_key()? {
            Some(bytes) => bytes,
            None => {
                let mut dek = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut dek)
                    .map_err(|_| PlatformError::Wipe("no randomness for the data key".into()))?;
                certs::files::write_secret(&self.dir.join("dek.key"), &dek)?;
                dek.to_vec()
            }
        };
        aead_key(&bytes)
    }

    fn path(&self, name: &str) -> Result<PathBuf, PlatformError> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(PlatformError::Wipe(format!("bad data item name {name:?}")));
        }
        Ok(self.dir.join(format!("{name}.enc")))
    }

    /// Stores `data` under `name`, encrypted.
    pub fn put(&self, name: &str, data: &[u8]) -> Result<(), PlatformError> {
        let sealed = self.seal(name, data)?;
        Ok(certs::files::write_secret(&self.path(name)?, &sealed)?)
    }

    /// Every item, by name, in the clear (none once the data key is destroyed).
    pub fn items(&self) -> Result<Vec<(String, Vec<u8>)>, PlatformError> {
        let mut names = Vec::new();
        if self.dir.exists() {
            for entry in std::fs::read_dir(&self.dir).map_err(err("listing data"))? {
                let path = entry.map_err(err("listing data"))?.path();
                if let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".enc"))
                {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        let mut items = Vec::new();
        for name in names {
            if let Some(data) = self.get(&name)? {
                items.push((name, data));
            }
        }
        Ok(items)
    }

    /// The data stored under `name`, if any.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>, PlatformError> {
        let path = self.path(name)?;
        if !path.exists() {
            return Ok(None);
        }
        let bytes = certs::files::read_limited(&path, MAX_ITEM)?;
        self.open(name, &bytes)
    }

    /// `data` encrypted under the data key, bound to `name`: nonce || ciphertext || tag.
    pub(crate) fn seal(&self, name: &str, data: &[u8]) -> Result<Vec<u8>, PlatformError> {
        let key = self.key()?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| PlatformError::Wipe("no randomness".into()))?;
        let mut sealed = data.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| PlatformError::Wipe("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// What [`Vault::seal`] sealed under `name`; `None` once the data key was destroyed (the
    /// cryptographic erase of a decommissioning: what was sealed is gone).
    pub(crate) fn open(&self, name: &str, bytes: &[u8]) -> Result<Option<Vec<u8>>, PlatformError> {
        let Some(key) = self.stored_key()? else {
            return Ok(None);
        };
        let (nonce, sealed) = bytes
            .split_at_checked(NONCE_LEN)
            .ok_or_else(|| PlatformError::Corrupt(format!("{name}: too short")))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| PlatformError::Corrupt(format!("{name}: nonce")))?;
        let mut sealed = sealed.to_vec();
        let plain = aead_key(&key)?
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut sealed)
            .map_err(|_| PlatformError::Corrupt(format!("{name}: does not decrypt")))?;
        Ok(Some(plain.to_vec()))
    }
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey, PlatformError> {
    let key = UnboundKey::new(&AES_256_GCM, bytes)
        .map_err(|_| PlatformError::Corrupt("data-encryption key".into()))?;
    Ok(LessSafeKey::new(key))
}

/// The reference wiper over a state directory.
#[derive(Debug, Clone)]
pub struct FileWiper {
    state_dir: PathBuf,
}

impl FileWiper {
    /// A wiper of `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        FileWiper {
            state_dir: state_dir.to_path_buf(),
        }
    }
}

impl Wiper for FileWiper {
    fn export(&self) -> Result<Vec<(String, Vec<u8>)>, PlatformError> {
        Vault::new(&self.state_dir).items()
    }

    fn wipe(&self, _method: WipeMethod) -> Result<Vec<WipedTarget>, PlatformError> {
        let data = self.state_dir.join("data");
        let mut targets = Vec::new();
        // Purge: the key first, so nothing encrypted under it can be read from here on.
        let (bytes, verified) = overwrite_and_remove(&data.join("dek.key"))?;
        targets.push(WipedTarget {
            target: "data-encryption-key".into(),
            bytes,
            method: WipeMethod::PurgeCryptographicErase,
            verification: "key overwritten, read back as zeros, removed".into(),
            verified,
        });
        // Clear: every ciphertext file, then the network credentials.
        let mut files = Vec::new();
        if data.exists() {
            for entry in std::fs::read_dir(&data).map_err(err("listing data"))? {
                files.push(entry.map_err(err("listing data"))?.path());
            }
        }
        targets.push(clear("application-data", &files)?);
        let credentials = [layout::NETWORK, layout::LDEVID_CERT, layout::CHAIN]
            .map(|name| self.state_dir.join(name));
        targets.push(clear("network-credentials", &credentials)?);
        Ok(targets)
    }
}

/// Clears `files` (overwrite, read back, remove) as one wiped target.
fn clear(target: &str, files: &[PathBuf]) -> Result<WipedTarget, PlatformError> {
    let (mut bytes, mut verified) = (0u64, true);
    for path in files {
        let (b, v) = overwrite_and_remove(path)?;
        bytes += b;
        verified &= v;
    }
    Ok(WipedTarget {
        target: target.into(),
        bytes,
        method: WipeMethod::Clear,
        verification: "overwritten with zeros, read back, removed".into(),
        verified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_round_trips_and_is_unreadable_after_the_wipe() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::new(dir.path());
        vault.put("readings", b"secret telemetry").unwrap();
        assert_eq!(vault.get("readings").unwrap().unwrap(), b"secret telemetry");
        let targets = FileWiper::new(dir.path()).wipe(WipeMethod::Clear).unwrap();
        assert!(targets.iter().all(|t| t.verified));
        assert_eq!(targets[0].bytes, 32);
        assert!(vault.get("readings").unwrap().is_none());
        assert!(vault.path("../x").is_err());
    }
}
