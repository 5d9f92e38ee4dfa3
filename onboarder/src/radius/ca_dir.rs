//! The directory FreeRADIUS's EAP-TLS module verifies client certificates with (`ca_path`,
//! `check_crl = yes`): the owner roots in force, our issuing CAs under them, and each issuing
//! CA's current CRL, named as OpenSSL looks them up (`<subject hash>.<n>` for certificates,
//! `<hash>.r<n>` for CRLs, as `c_rehash` would make them).
//!
//! The directory is replaced as a whole: a new one is written beside it and a symbolic link is
//! renamed over the configured path, so a reader sees the old set or the new one, never half of
//! each. Everything in it is public (certificates and CRLs), so it is readable by all: the
//! RADIUS server usually runs as a user of its own.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{Error, Result};

/// An issuing CA and its current CRL (DER).
pub struct CaWithCrl<'a> {
    /// The CA certificate.
    pub cert: &'a [u8],
    /// Its CRL, once one was published.
    pub crl: Option<&'a [u8]>,
}

/// Writes the CA directory at `path`: `roots` (DER) and `issuing` with their CRLs.
pub fn write(path: &Path, roots: &[&[u8]], issuing: &[CaWithCrl<'_>]) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Config(format!("{} names no directory", path.display())))?;
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let staged = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    let mut used: HashMap<String, u32> = HashMap::new();
    let mut file = |hash: u32, crl: bool, pem: String| -> Result<()> {
        let kind = if crl { "r" } else { "" };
        let key = format!("{hash:08x}.{kind}");
        let n = used.entry(key.clone()).or_default();
        let file = staged.path().join(format!("{key}{n}"));
        *n += 1;
        std::fs::write(&file, pem).map_err(|e| Error::io(&file, e))?;
        set_mode(&file, 0o644)
    };
    for der in roots.iter().copied().chain(issuing.iter().map(|c| c.cert)) {
        file(hash_of(der)?, false, certs::files::cert_pem(der))?;
    }
    for ca in issuing {
        if let Some(crl) = ca.crl {
            file(
                hash_of(ca.cert)?,
                true,
                certs::files::pem_block("X509 CRL", crl),
            )?;
        }
    }
    set_mode(staged.path(), 0o755)?;
    let staged = staged.keep();
    let target = staged
        .file_name()
        .ok_or_else(|| Error::Config("a staging directory without a name".into()))?
        .to_owned();
    // A real directory in the way (made by hand, or by an earlier layout) goes first.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
    }
    let link = parent.join(format!(".{name}.link"));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link).map_err(|e| Error::io(&link, e))?;
    std::fs::rename(&link, path).map_err(|e| Error::io(path, e))?;
    remove_stale(parent, name, &target);
    Ok(())
}

/// Removes the earlier versions of the directory (never the one `path` now points at).
fn remove_stale(parent: &Path, name: &str, current: &std::ffi::OsStr) {
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let is_version = file_name
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix) && !n.ends_with(".link"));
        if is_version && file_name != current {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// OpenSSL's hash of a certificate's subject: the name its directory lookup opens.
fn hash_of(der: &[u8]) -> Result<u32> {
    openssl::x509::X509::from_der(der)
        .map(|c| c.subject_name_hash())
        .map_err(|e| Error::Config(format!("a CA certificate OpenSSL cannot read: {e}")))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_is_replaced_whole_and_openssl_finds_what_it_holds() {
        let kit = crate::core::testkit::Kit::new();
        let issuing = &kit.registrar.issuing.ca;
        let root = kit.owner_root.as_slice();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("radius-ca");
        write(&path, &[root], &[]).unwrap();
        let first = std::fs::read_link(&path).unwrap();
        let now = crate::core::testkit::NOW;
        let crl = certs::crl::build(issuing, &[], 1, now, now + 3600).unwrap();
        write(
            &path,
            &[root],
            &[CaWithCrl {
                cert: issuing.cert_der(),
                crl: Some(&crl),
            }],
        )
        .unwrap();
        let second = std::fs::read_link(&path).unwrap();
        assert_ne!(first, second);
        assert!(!dir.path().join(&first).exists(), "the old version is gone");
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        let hash = format!("{:08x}", hash_of(issuing.cert_der()).unwrap());
        assert!(names.contains(&format!("{hash}.0")), "{names:?}");
        assert!(names.contains(&format!("{hash}.r0")), "{names:?}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
