//! Overwriting a file before removing it (NIST SP 800-88 Clear on a file system), with a
//! read-back that says whether the overwrite held.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::PlatformError;

fn err(what: &str) -> impl Fn(std::io::Error) -> PlatformError + '_ {
    move |e| PlatformError::Wipe(format!("{what}: {e}"))
}

/// Overwrites a file in place with zeros, syncs, reads it back, then removes it. Returns the
/// bytes it held and whether the read-back found only zeros.
pub fn overwrite_and_remove(path: &Path) -> Result<(u64, bool), PlatformError> {
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, true)),
        Err(e) => return Err(err("opening")(e)),
    };
    let len = file.metadata().map_err(err("reading metadata"))?.len();
    let zeros = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n]).map_err(err("overwriting"))?;
        left -= n as u64;
    }
    file.sync_all().map_err(err("syncing"))?;
    file.seek(SeekFrom::Start(0)).map_err(err("rewinding"))?;
    let mut back = Vec::with_capacity(len as usize);
    file.read_to_end(&mut back).map_err(err("reading back"))?;
    let clean = back.len() as u64 == len && back.iter().all(|b| *b == 0);
    drop(file);
    std::fs::remove_file(path).map_err(err("removing"))?;
    Ok((len, clean && !path.exists()))
}

/// Whether `path` is what [`overwrite_and_remove`] leaves when it is interrupted between the
/// overwrite and the removal: a file of zeros (or empty), which no key or state file ever is.
pub fn left_zeroed(path: &Path) -> Result<bool, PlatformError> {
    let bytes = std::fs::read(path).map_err(err("reading"))?;
    Ok(bytes.iter().all(|b| *b == 0))
}
