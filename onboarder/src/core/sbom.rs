//! Software bills of materials shipped with releases: the manifest's SBOM reference binds the
//! document's SHA-256, so the SBOM the onboarder keeps and serves is the one the manufacturer
//! signed for, and one the onboarder can read (CycloneDX JSON or SPDX JSON).

use protocol::manifest::Manifest;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest SBOM accepted.
pub const MAX_SBOM: usize = 8 * 1024 * 1024;

/// Why an SBOM was refused.
#[non_exhaustive]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SbomError {
    /// The manifest names an SBOM and none came with the release.
    #[error("the manifest names an SBOM ({0}): upload the document with the release")]
    Missing(String),
    /// An SBOM came and the manifest names none: nothing binds it to the release.
    #[error("the manifest names no SBOM, so nothing binds this document to the release")]
    Unbound,
    /// The document is not the one the manifest's digest names.
    #[error("the SBOM's SHA-256 is not the one the signed manifest names")]
    WrongDigest,
    /// Too large.
    #[error("the SBOM is larger than {MAX_SBOM} bytes")]
    TooLarge,
    /// Not a document of the format the manifest names.
    #[error("the SBOM is not a {format} JSON document: {detail}")]
    Malformed {
        /// The format the manifest names.
        format: String,
        /// What is wrong.
        detail: String,
    },
}

/// The SBOM of a release as the onboarder keeps it (the document is in the image store under
/// its digest).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SbomInfo {
    /// `cyclonedx` or `spdx`.
    pub format: String,
    /// SHA-256 of the document.
    #[serde(with = "serde_bytes")]
    #[schema(value_type = Vec<u8>)]
    pub digest: Vec<u8>,
    /// Its size in bytes.
    pub size: u64,
}

impl SbomInfo {
    /// The document's media type.
    pub fn media_type(&self) -> &'static str {
        match self.format.as_str() {
            "spdx" => "application/spdx+json",
            _ => "application/vnd.cyclonedx+json",
        }
    }
}

/// Checks the SBOM that came with a release against its (verified) manifest.
pub fn check(manifest: &Manifest, document: Option<&[u8]>) -> Result<Option<SbomInfo>, SbomError> {
    let (reference, document) = match (&manifest.sbom, document) {
        (None, None) => return Ok(None),
        (None, Some(_)) => return Err(SbomError::Unbound),
        (Some(r), None) => return Err(SbomError::Missing(r.uri.clone())),
        (Some(r), Some(d)) => (r, d),
    };
    if document.len() > MAX_SBOM {
        return Err(SbomError::TooLarge);
    }
    if protocol::manifest::sha256(document).as_slice() != reference.digest.as_slice() {
        return Err(SbomError::WrongDigest);
    }
    let malformed = |detail: String| SbomError::Malformed {
        format: reference.format.clone(),
        detail,
    };
    let json: serde_json::Value =
        serde_json::from_slice(document).map_err(|e| malformed(e.to_string()))?;
    let ok = match reference.format.as_str() {
        "cyclonedx" => json.get("bomFormat").and_then(|v| v.as_str()) == Some("CycloneDX"),
        "spdx" => json
            .get("spdxVersion")
            .and_then(|v| v.as_str())
            .is_some_and(|v| v.starts_with("SPDX-")),
        other => return Err(malformed(format!("unknown format {other:?}"))),
    };
    if !ok {
        return Err(malformed(match reference.format.as_str() {
            "cyclonedx" => "no \"bomFormat\": \"CycloneDX\"".into(),
            _ => "no \"spdxVersion\": \"SPDX-...\"".into(),
        }));
    }
    Ok(Some(SbomInfo {
        format: reference.format.clone(),
        digest: reference.digest.clone(),
        size: document.len() as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::manifest::SbomRef;

    fn manifest(sbom: Option<SbomRef>) -> Manifest {
        Manifest {
            vendor_id: "v".into(),
            class_id: "c".into(),
            sequence: 1,
            version: "1".into(),
            size: 1,
            digest: vec![0; 32],
            created_on: 0,
            expires_on: None,
            sbom,
            support_ends_on: None,
        }
    }

    fn reference(format: &str, doc: &[u8]) -> Option<SbomRef> {
        Some(SbomRef {
            format: format.into(),
            uri: "https://maker.example/sbom.json".into(),
            digest: protocol::manifest::sha256(doc).to_vec(),
        })
    }

    #[test]
    fn only_the_signed_document_of_the_named_format_is_kept() {
        let cdx = br#"{"bomFormat": "CycloneDX", "specVersion": "1.5", "components": []}"#;
        let spdx = br#"{"spdxVersion": "SPDX-2.3", "name": "fw"}"#;
        let kept = check(&manifest(reference("cyclonedx", cdx)), Some(cdx)).unwrap();
        assert_eq!(kept.unwrap().size, cdx.len() as u64);
        assert!(
            check(&manifest(reference("spdx", spdx)), Some(spdx))
                .unwrap()
                .is_some()
        );
        assert_eq!(check(&manifest(None), None), Ok(None));
        assert_eq!(check(&manifest(None), Some(cdx)), Err(SbomError::Unbound));
        assert!(matches!(
            check(&manifest(reference("cyclonedx", cdx)), None),
            Err(SbomError::Missing(_))
        ));
        let mut tampered = cdx.to_vec();
        tampered[3] ^= 1;
        assert_eq!(
            check(&manifest(reference("cyclonedx", cdx)), Some(&tampered)),
            Err(SbomError::WrongDigest)
        );
        // Signed, but not what it says it is.
        assert!(matches!(
            check(&manifest(reference("spdx", cdx)), Some(cdx)),
            Err(SbomError::Malformed { .. })
        ));
        let not_json = b"<bom/>";
        assert!(matches!(
            check(&manifest(reference("cyclonedx", not_json)), Some(not_json)),
            Err(SbomError::Malformed { .. })
        ));
    }
}
