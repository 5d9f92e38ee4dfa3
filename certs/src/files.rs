//! Reading and writing PEM files safely.
//!
//! Writes are atomic (a temporary file in the same directory, synced, then renamed), so a crash
//! leaves either the old file or the new one. Secrets are created with mode 0600 from the start,
//! never chmod-ed after the fact. Reads refuse files larger than any key, certificate or list we
//! handle.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::CertError;

/// Largest PEM file read (a bundle of thousands of certificates fits).
pub const MAX_PEM_FILE: u64 = 16 * 1024 * 1024;

/// Writes a secret (a private key, a token) with mode 0600; directories it creates are 0700.
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<(), CertError> {
    write_atomic(path, contents, 0o600)
}

/// Writes a file for its owner only (0600, directories it creates 0700) that is not itself a
/// secret: everything in a server's data directory, where certificates sit beside keys and
/// the database.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), CertError> {
    write_atomic(path, contents, 0o600)
}

/// Creates `dir` (and missing parents) readable by its owner only (0700), and makes it 0700 if
/// it already existed.
pub fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir).map_err(|e| CertError::io(dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| CertError::io(dir, e))?;
    }
    #[cfg(not(unix))]
    builder.create(dir).map_err(|e| CertError::io(dir, e))?;
    Ok(())
}

/// Writes a public file (a certificate, a CRL) with mode 0644.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), CertError> {
    write_atomic(path, contents, 0o644)
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = dir.filter(|d| !d.is_dir()) {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(
            &mut builder,
            if mode & 0o077 == 0 { 0o700 } else { 0o755 },
        );
        builder.create(dir).map_err(|e| CertError::io(dir, e))?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| CertError::io(path, std::io::ErrorKind::InvalidInput.into()))?;
    let tmp = temporary_name(path, name);
    let result = (|| {
        write_synced(&tmp, contents, mode)?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CertError::io(path, e)
    })
}

/// A name beside `path` for its next version, unique to this process and write: replicas
/// sharing a directory may write the same file at the same moment.
fn temporary_name(path: &Path, name: &std::ffi::OsStr) -> std::path::PathBuf {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_file_name(format!(
        ".{}.{}-{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ))
}

/// Writes the file at `path` (a temporary name of this process's: one left by a crashed
/// process of the same id is overwritten) with `mode`, on disk when this returns.
fn write_synced(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Makes a rename or a link in `dir` durable.
fn sync_dir(dir: Option<&Path>) -> std::io::Result<()> {
    match dir {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Creates `path` (0600) with `contents` unless it exists: whole or not at all, and only one
/// of several processes racing to create it succeeds. Whether this call created it.
fn create_private_once(path: &Path, contents: &[u8]) -> Result<bool, CertError> {
    let name = path
        .file_name()
        .ok_or_else(|| CertError::io(path, std::io::ErrorKind::InvalidInput.into()))?;
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
    {
        create_private_dir(dir)?;
    }
    let tmp = temporary_name(path, name);
    let result = (|| {
        write_synced(&tmp, contents, 0o600)?;
        // A link, unlike a rename, never replaces a file another process made meanwhile.
        let linked = match fs::hard_link(&tmp, path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        fs::remove_file(&tmp)?;
        sync_dir(path.parent().filter(|d| !d.as_os_str().is_empty()))?;
        Ok(linked)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CertError::io(path, e)
    })
}

/// Reads a file of at most `limit` bytes.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, CertError> {
    let file = File::open(path).map_err(|e| CertError::io(path, e))?;
    let size = file.metadata().map_err(|e| CertError::io(path, e))?.len();
    if size > limit {
        return Err(CertError::FileTooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let mut out = Vec::with_capacity(size as usize);
    file.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| CertError::io(path, e))?;
    if out.len() as u64 > limit {
        return Err(CertError::FileTooLarge {
            path: path.to_path_buf(),
            size: out.len() as u64,
            limit,
        });
    }
    Ok(out)
}

/// A random secret of `len` bytes kept as hex in `path` (mode 0600): made on first use, read
/// after. For keys that must outlive a restart (the store's sealing key, QUIC's stateless
/// reset key).
pub fn secret(path: &Path, len: usize) -> Result<Vec<u8>, CertError> {
    use ring::rand::SecureRandom;
    if !path.exists() {
        let mut key = vec![0u8; len];
        ring::rand::SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| CertError::Key("no randomness".into()))?;
        // Replicas starting together on one directory all read the one that was made first.
        create_private_once(path, crate::inspect::hex(&key).as_bytes())?;
    }
    let text = read_limited(path, 4 * len as u64 + 64)?;
    std::str::from_utf8(&text)
        .ok()
        .and_then(|t| crate::inspect::unhex(t.trim()))
        .filter(|k| k.len() == len)
        .ok_or_else(|| CertError::Key(format!("{} is not a {len}-byte hex key", path.display())))
}

/// Reads a PEM text file.
pub fn read_pem_text(path: &Path) -> Result<String, CertError> {
    let bytes = read_limited(path, MAX_PEM_FILE)?;
    String::from_utf8(bytes)
        .map_err(|_| CertError::parse("PEM file", format!("{} is not text", path.display())))
}

/// Reads every `CERTIFICATE` block of a PEM file, in order, as DER.
pub fn read_certs(path: &Path) -> Result<Vec<Vec<u8>>, CertError> {
    let certs = certs_from_pem(&read_pem_text(path)?)
        .map_err(|e| CertError::parse("certificate file", format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(CertError::parse(
            "certificate file",
            format!("{} holds no certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// Reads one certificate (the first of the file).
pub fn read_cert(path: &Path) -> Result<Vec<u8>, CertError> {
    Ok(read_certs(path)?.swap_remove(0))
}

/// Reads a private key file.
pub fn read_key(path: &Path) -> Result<crate::KeyPair, CertError> {
    let text = read_pem_text(path)?;
    crate::KeyPair::from_pem(&text).map_err(|e| match e {
        CertError::Key(detail) => CertError::Key(format!("{}: {detail}", path.display())),
        other => other,
    })
}

/// Every `CERTIFICATE` block of a PEM text, as DER.
pub fn certs_from_pem(text: &str) -> Result<Vec<Vec<u8>>, CertError> {
    pem_blocks(text, "CERTIFICATE")
}

/// Every block tagged `tag` (`X509 CRL`) of a PEM text, as DER.
pub fn pem_blocks(text: &str, tag: &str) -> Result<Vec<Vec<u8>>, CertError> {
    let blocks = pem::parse_many(text).map_err(|e| CertError::parse("PEM", e))?;
    Ok(blocks
        .into_iter()
        .filter(|b| b.tag() == tag)
        .map(|b| b.into_contents())
        .collect())
}

/// A PEM block with Unix line endings (the pem crate defaults to CRLF).
pub fn pem_block(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// One certificate as PEM.
pub fn cert_pem(der: &[u8]) -> String {
    pem_block("CERTIFICATE", der)
}

/// Several certificates as one PEM text, in the given order.
pub fn certs_pem<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    ders.into_iter().map(cert_pem).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_are_0600_and_writes_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.pem");
        write_secret(&path, b"one").unwrap();
        write_secret(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path().join("sub")).unwrap().count(), 1);
        #[cfg(unix)]
        assert_eq!(
            fs::metadata(dir.path().join("sub"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }

    #[test]
    fn processes_racing_to_make_a_secret_all_read_the_same_one() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tls/url.key");
            let keys: Vec<Vec<u8>> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..8).map(|_| s.spawn(|| secret(&path, 32))).collect();
                racers
                    .into_iter()
                    .map(|r| r.join().unwrap().unwrap())
                    .collect()
            });
            assert!(keys.iter().all(|k| k == &keys[0]));
            assert_eq!(secret(&path, 32).unwrap(), keys[0]);
            // Nothing left beside it.
            assert_eq!(fs::read_dir(dir.path().join("tls")).unwrap().count(), 1);
            #[cfg(unix)]
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn writers_of_the_same_file_at_once_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crl.pem");
        std::thread::scope(|s| {
            let writers: Vec<_> = (0..8u8)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || {
                        for _ in 0..20 {
                            write_public(path, &[i; 64]).unwrap();
                        }
                    })
                })
                .collect();
            writers.into_iter().for_each(|w| w.join().unwrap());
        });
        let last = fs::read(&path).unwrap();
        assert!(last.len() == 64 && last.iter().all(|b| *b == last[0]));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        fs::write(&path, vec![b'a'; 100]).unwrap();
        assert!(matches!(
            read_limited(&path, 10),
            Err(CertError::FileTooLarge { size: 100, .. })
        ));
    }
}
