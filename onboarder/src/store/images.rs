//! Firmware images, content-addressed on disk: `DIR/firmware/<sha256 hex>`.
//!
//! An image is written once, under the name of its digest, after its digest was checked; it is
//! never modified. Reads take an offset and a length, so a download can resume anywhere.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use super::StoreError;

/// Largest image accepted.
pub const MAX_IMAGE: u64 = 256 * 1024 * 1024;

/// The image directory.
#[derive(Debug, Clone)]
pub struct Images {
    dir: PathBuf,
}

impl Images {
    /// Images kept in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Images { dir }
    }

    fn path(&self, digest: &[u8]) -> PathBuf {
        self.dir.join(certs::inspect::hex(digest))
    }

    /// Stores `image`, whose SHA-256 the caller has checked is `digest`.
    pub fn put(&self, digest: &[u8], image: &[u8]) -> Result<(), StoreError> {
        certs::files::write_public(&self.path(digest), image)
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    /// Whether the image is present.
    pub fn contains(&self, digest: &[u8]) -> bool {
        self.path(digest).exists()
    }

    /// Up to `length` bytes of image `digest` from `offset`.
    pub fn read(&self, digest: &[u8], offset: u64, length: u32) -> Result<Vec<u8>, StoreError> {
        let io = |e: std::io::Error| StoreError::Io(format!("reading image: {e}"));
        let mut file = std::fs::File::open(self.path(digest)).map_err(io)?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut out = Vec::with_capacity(length as usize);
        file.take(u64::from(length))
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok(out)
    }
}
