//! Reference A/B firmware slots on a file system.
//!
//! ```text
//! STATE/firmware/staging/<sha256>.part   image being downloaded (resumable)
//! STATE/firmware/a/image.bin, manifest   slot A
//! STATE/firmware/b/image.bin, manifest   slot B
//! STATE/firmware/boot.json               which slot boots, and whether it is on trial
//! ```
//!
//! The "reboot" switches the active slot and marks it on trial; the agent then runs the health
//! check and commits, or rolls back to the previous slot. The reference health check is the
//! image's self-test: an image containing the marker `SELFTEST:FAIL` fails it (the demo and the
//! tests use this to ship a bad release); a real device runs its own.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use certs::files;
use serde::{Deserialize, Serialize};

use super::FirmwareSlots;
use crate::error::PlatformError;

/// The marker that makes the reference self-test fail.
pub const SELFTEST_FAIL: &[u8] = b"SELFTEST:FAIL";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Boot {
    active: String,
    previous: Option<String>,
    armed: Option<String>,
    trial: bool,
}

impl Default for Boot {
    fn default() -> Self {
        Boot {
            active: "a".into(),
            previous: None,
            armed: None,
            trial: false,
        }
    }
}

/// The image a device boots: its slot's manifest, and the image's SHA-256 and size (read a
/// block at a time).
#[derive(Debug, Clone)]
pub struct Booted {
    /// The signed manifest stored with the image.
    pub manifest: Vec<u8>,
    /// SHA-256 of the image.
    pub digest: [u8; 32],
    /// Its size in bytes.
    pub size: u64,
}

/// A/B slots under a directory.
#[derive(Debug, Clone)]
pub struct FileSlots {
    dir: PathBuf,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> PlatformError + '_ {
    move |e| PlatformError::Firmware(format!("{what}: {e}"))
}

impl FileSlots {
    /// Slots under `dir` (created on first use).
    pub fn new(dir: &Path) -> Self {
        FileSlots {
            dir: dir.to_path_buf(),
        }
    }

    /// What the device boots, for a checker from outside: `None` before any install.
    pub fn booted(&self) -> Result<Option<Booted>, PlatformError> {
        let slot = self.dir.join(self.boot()?.active);
        let Ok(manifest) = std::fs::read(slot.join("manifest")) else {
            return Ok(None);
        };
        let mut file =
            std::fs::File::open(slot.join("image.bin")).map_err(io("the booted image"))?;
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut block = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut block).map_err(io("the booted image"))?;
            if n == 0 {
                break;
            }
            hash.update(&block[..n]);
            size += n as u64;
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(hash.finish().as_ref());
        Ok(Some(Booted {
            manifest,
            digest,
            size,
        }))
    }

    fn staged(&self, digest: &[u8]) -> PathBuf {
        self.dir
            .join("staging")
            .join(format!("{}.part", certs::inspect::hex(digest)))
    }

    fn boot(&self) -> Result<Boot, PlatformError> {
        let path = self.dir.join("boot.json");
        if !path.exists() {
            return Ok(Boot::default());
        }
        serde_json::from_slice(&files::read_limited(&path, 4096)?)
            .map_err(|e| PlatformError::Corrupt(format!("boot.json: {e}")))
    }

    fn set_boot(&self, boot: &Boot) -> Result<(), PlatformError> {
        let json = serde_json::to_vec(boot).map_err(|e| PlatformError::Corrupt(e.to_string()))?;
        Ok(files::write_public(&self.dir.join("boot.json"), &json)?)
    }

    /// The image in the active slot, if one was ever installed.
    pub fn active_image(&self) -> Result<Option<Vec<u8>>, PlatformError> {
        let path = self.dir.join(self.boot()?.active).join("image.bin");
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(
            std::fs::read(&path).map_err(io("reading the active image"))?,
        ))
    }
}

impl FirmwareSlots for FileSlots {
    fn staged_len(&self, digest: &[u8]) -> Result<u64, PlatformError> {
        Ok(std::fs::metadata(self.staged(digest)).map_or(0, |m| m.len()))
    }

    fn stage(&self, digest: &[u8], offset: u64, bytes: &[u8]) -> Result<(), PlatformError> {
        let path = self.staged(digest);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating the staging area"))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening the staged image"))?;
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.write_all(bytes))
            .and_then(|()| file.sync_data())
            .map_err(io("writing the staged image"))
    }

    fn staged_digest(&self, digest: &[u8]) -> Result<(u64, [u8; 32]), PlatformError> {
        let mut file =
            std::fs::File::open(self.staged(digest)).map_err(io("opening the staged image"))?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(io("reading the staged image"))?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
            size += n as u64;
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Ok((size, out))
    }

    fn discard(&self, digest: &[u8]) -> Result<(), PlatformError> {
        match std::fs::remove_file(self.staged(digest)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io("discarding the staged image")(e))
            }
            _ => Ok(()),
        }
    }

    fn install(&self, digest: &[u8], manifest: &[u8]) -> Result<(), PlatformError> {
        let mut boot = self.boot()?;
        let target = if boot.active == "a" { "b" } else { "a" };
        let slot = self.dir.join(target);
        std::fs::create_dir_all(&slot).map_err(io("creating the slot"))?;
        std::fs::rename(self.staged(digest), slot.join("image.bin"))
            .map_err(io("installing the image"))?;
        files::write_public(&slot.join("manifest"), manifest)?;
        boot.armed = Some(target.to_string());
        self.set_boot(&boot)
    }

    fn boot_trial(&self) -> Result<(), PlatformError> {
        let mut boot = self.boot()?;
        let armed = boot
            .armed
            .take()
            .ok_or_else(|| PlatformError::Firmware("no image is armed".into()))?;
        boot.previous = Some(std::mem::replace(&mut boot.active, armed));
        boot.trial = true;
        self.set_boot(&boot)
    }

    /// Looks for the failure marker in the running image, a block at a time (an image may be
    /// larger than the memory the agent should use).
    fn self_test(&self) -> Result<(), String> {
        let active = self.boot().map_err(|e| e.to_string())?.active;
        let path = self.dir.join(active).join("image.bin");
        let Ok(mut file) = std::fs::File::open(&path) else {
            return Ok(());
        };
        let mut block = vec![0u8; 64 * 1024];
        let mut carried = Vec::new();
        loop {
            let n = file
                .read(&mut block)
                .map_err(|e| format!("reading the running image: {e}"))?;
            if n == 0 {
                return Ok(());
            }
            carried.extend_from_slice(&block[..n]);
            if carried
                .windows(SELFTEST_FAIL.len())
                .any(|w| w == SELFTEST_FAIL)
            {
                return Err("the image's self-test failed".into());
            }
            let keep = carried.len().min(SELFTEST_FAIL.len() - 1);
            carried.drain(..carried.len() - keep);
        }
    }

    fn commit(&self) -> Result<(), PlatformError> {
        let mut boot = self.boot()?;
        boot.trial = false;
        self.set_boot(&boot)
    }

    fn rollback(&self) -> Result<(), PlatformError> {
        let mut boot = self.boot()?;
        if let Some(previous) = boot.previous.take() {
            boot.active = previous;
        }
        boot.trial = false;
        self.set_boot(&boot)
    }

    fn in_trial(&self) -> Result<bool, PlatformError> {
        Ok(self.boot()?.trial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_trial_commit_and_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let slots = FileSlots::new(dir.path());
        let d = [1u8; 32];
        slots.stage(&d, 0, b"hello ").unwrap();
        assert_eq!(slots.staged_len(&d).unwrap(), 6);
        slots.stage(&d, 6, b"world").unwrap();
        let (size, digest) = slots.staged_digest(&d).unwrap();
        assert_eq!(size, 11);
        assert_eq!(digest, protocol::manifest::sha256(b"hello world"));
        slots.install(&d, b"m").unwrap();
        slots.boot_trial().unwrap();
        assert!(slots.in_trial().unwrap());
        assert_eq!(slots.active_image().unwrap().unwrap(), b"hello world");
        slots.commit().unwrap();
        assert!(!slots.in_trial().unwrap());

        let bad = [2u8; 32];
        slots.stage(&bad, 0, b"x SELFTEST:FAIL x").unwrap();
        slots.install(&bad, b"m").unwrap();
        slots.boot_trial().unwrap();
        assert!(slots.self_test().is_err());
        slots.rollback().unwrap();
        assert_eq!(slots.active_image().unwrap().unwrap(), b"hello world");
        assert!(slots.self_test().is_ok());

        // The marker across two of the blocks the self-test reads.
        let split = [3u8; 32];
        let mut image = vec![0u8; 64 * 1024 - 5];
        image.extend_from_slice(SELFTEST_FAIL);
        image.extend_from_slice(&[0u8; 100]);
        slots.stage(&split, 0, &image).unwrap();
        slots.install(&split, b"m").unwrap();
        slots.boot_trial().unwrap();
        assert!(slots.self_test().is_err());
    }
}
