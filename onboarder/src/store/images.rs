//! Firmware images, content-addressed: [`ImageStore`], and its default, a directory
//! (`DIR/firmware/<sha256 hex>`).
//!
//! An image is written once, under the name of its digest, after its digest was checked; it is
//! never modified. Reads take an offset and a length, so a download can resume anywhere.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::StoreError;

/// Largest image accepted.
pub const MAX_IMAGE: u64 = 256 * 1024 * 1024;

/// The last image read is kept in memory up to this size: a campaign serves the same image to
/// every device, chunk by chunk, and reading it from the file each time cost a blocking task,
/// an open, a seek and a copy per chunk (fleet of 2,000: 9 % of the firmware phase's server
/// CPU). Images are only written through [`Images::put`], which keeps the copy in memory
/// coherent.
pub(super) const HOT_LIMIT: u64 = 64 * 1024 * 1024;

/// Where firmware images are kept. Images are large and written once, so they live apart from
/// the device records (a database backend may keep them in object storage).
pub trait ImageStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores `image`, whose SHA-256 the caller has checked is `digest`.
    fn put(&self, digest: &[u8], image: &[u8]) -> Result<(), StoreError>;
    /// Up to `length` bytes of image `digest` from `offset` (may block: call it off the async
    /// workers).
    fn read(&self, digest: &[u8], offset: u64, length: u32) -> Result<Vec<u8>, StoreError>;
    /// The same, if it can be answered from memory without blocking.
    fn read_hot(&self, _digest: &[u8], _offset: u64, _length: u32) -> Option<Vec<u8>> {
        None
    }
}

/// The image directory.
#[derive(Debug, Clone)]
pub struct DirImages {
    dir: PathBuf,
    hot: Arc<Mutex<Option<Hot>>>,
}

#[derive(Debug)]
struct Hot {
    digest: Vec<u8>,
    image: Arc<[u8]>,
}

impl DirImages {
    /// Images kept in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        DirImages {
            dir,
            hot: Arc::default(),
        }
    }

    fn path(&self, digest: &[u8]) -> PathBuf {
        self.dir.join(certs::inspect::hex(digest))
    }
}

impl ImageStore for DirImages {
    /// Up to `length` bytes of image `digest` from `offset`, if it is the image in memory.
    /// Never touches the disk.
    fn read_hot(&self, digest: &[u8], offset: u64, length: u32) -> Option<Vec<u8>> {
        let image = {
            let hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
            hot.as_ref().filter(|h| h.digest == digest)?.image.clone()
        };
        Some(slice(&image, offset, length).to_vec())
    }

    /// Stores `image`, whose SHA-256 the caller has checked is `digest`.
    fn put(&self, digest: &[u8], image: &[u8]) -> Result<(), StoreError> {
        super::space::check(&self.dir, image.len() as u64)?;
        certs::files::write_private(&self.path(digest), image)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        // The next read loads it again (an upload of the same digest is the same bytes, but the
        // memory copy must never disagree with the file).
        let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        if hot.as_ref().is_some_and(|h| h.digest == digest) {
            *hot = None;
        }
        Ok(())
    }

    /// Up to `length` bytes of image `digest` from `offset`, from the file (blocking); an
    /// image small enough becomes the one kept in memory.
    fn read(&self, digest: &[u8], offset: u64, length: u32) -> Result<Vec<u8>, StoreError> {
        let io = |e: std::io::Error| StoreError::Io(format!("reading image: {e}"));
        let mut file = std::fs::File::open(self.path(digest)).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        if size <= HOT_LIMIT {
            let mut image = Vec::with_capacity(size as usize);
            file.take(HOT_LIMIT).read_to_end(&mut image).map_err(io)?;
            let image: Arc<[u8]> = image.into();
            let chunk = slice(&image, offset, length).to_vec();
            *self.hot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Hot {
                digest: digest.to_vec(),
                image,
            });
            return Ok(chunk);
        }
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut out = Vec::with_capacity(length as usize);
        file.take(u64::from(length))
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok(out)
    }
}

/// `length` bytes of `image` from `offset`, fewer at its end, none past it.
pub(super) fn slice(image: &[u8], offset: u64, length: u32) -> &[u8] {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(image.len());
    let end = start.saturating_add(length as usize).min(image.len());
    &image[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_from_memory_match_reads_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let images = DirImages::new(dir.path().to_path_buf());
        let image: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let digest = protocol::manifest::sha256(&image);
        images.put(&digest, &image).unwrap();
        assert_eq!(images.read_hot(&digest, 0, 10), None, "nothing read yet");
        let cold = images.read(&digest, 5, 131_072).unwrap();
        assert_eq!(cold, &image[5..5 + 131_072]);
        for (offset, length) in [(5, 131_072), (299_990, 100), (300_000, 1), (u64::MAX, 8)] {
            let hot = images.read_hot(&digest, offset, length).unwrap();
            let end = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(image.len());
            let want = &image[end..(end + length as usize).min(image.len())];
            assert_eq!(hot, want, "offset {offset}");
        }
        // Another image is not served from memory until read.
        assert_eq!(images.read_hot(&[0; 32], 0, 10), None);
        // A file written again is read again.
        images.put(&digest, b"planted").unwrap();
        assert_eq!(images.read_hot(&digest, 0, 10), None);
        assert_eq!(images.read(&digest, 0, 10).unwrap(), b"planted");
    }
}
