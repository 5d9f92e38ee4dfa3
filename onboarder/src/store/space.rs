//! Free space on the disk of the data directory. A write that would leave less than
//! [`RESERVE`] free is refused before the engine sees it: sled turns a "no space left" inside
//! its log into an error it returns for every later call until the process restarts, while a
//! refusal here leaves it whole, so the store writes again by itself as soon as space returns.

use std::path::Path;

use super::StoreError;

/// Bytes kept free on the data directory's disk (sled's own log and flushes need room).
pub const RESERVE: u64 = 16 * 1024 * 1024;

/// Refuses a write of about `need` bytes that would leave less than [`RESERVE`] free on the
/// disk of `dir`.
pub fn check(dir: &Path, need: u64) -> Result<(), StoreError> {
    let free = free(dir)?;
    if free < need.saturating_add(RESERVE) {
        return Err(StoreError::DiskFull {
            free,
            reserve: RESERVE,
        });
    }
    Ok(())
}

#[cfg(unix)]
fn free(dir: &Path) -> Result<u64, StoreError> {
    // A directory made on first use (the image store's) is on its parent's disk.
    let dir = dir.ancestors().find(|d| d.exists()).unwrap_or(dir);
    let stat = rustix::fs::statvfs(dir)
        .map_err(|e| StoreError::Io(format!("free space of {}: {e}", dir.display())))?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(not(unix))]
fn free(_dir: &Path) -> Result<u64, StoreError> {
    Ok(u64::MAX)
}
