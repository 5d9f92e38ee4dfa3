//! The firmware repository: manufacturers' firmware-signing keys, and releases accepted only
//! when their manifest verifies with such a key and their image matches it.

use protocol::manifest::Manifest;

use super::{OperatorError, Pending, Service};
use crate::audit::AuditEvent;
use crate::core::release::{FirmwareKey, Release};
use crate::store::Change;

impl Service {
    /// Imports a manufacturer's firmware-signing key (PEM `PUBLIC KEY`, Ed25519) for `vendor`.
    pub async fn import_firmware_key(
        &self,
        pem: &str,
        vendor: &str,
    ) -> Result<FirmwareKey, OperatorError> {
        let key = certs::key::public_key_from_pem(pem)
            .map_err(|e| OperatorError::BadInput(e.to_string()))?;
        if !matches!(key, protocol::keys::PublicKey::Ed25519(_)) {
            return Err(OperatorError::BadInput("firmware keys are Ed25519".into()));
        }
        let fingerprint = crate::operator::sha256_hex(key.raw());
        self.commit(|now| {
            let record = FirmwareKey {
                vendor_id: vendor.to_string(),
                key: key.raw().to_vec(),
                fingerprint: fingerprint.clone(),
                added_at: now,
            };
            let change = Change {
                firmware_keys: vec![record.clone()],
                audit: vec![AuditEvent::operator(
                    None,
                    "firmware-key-imported",
                    format!("{vendor} sha256:{fingerprint}"),
                    now,
                )],
                ..Change::default()
            };
            Ok::<_, OperatorError>(Pending::of(change, record))
        })
        .await
    }

    /// Imported firmware keys.
    pub fn firmware_keys(&self) -> Result<Vec<FirmwareKey>, OperatorError> {
        Ok(self.store.firmware_keys()?)
    }

    /// Accepts a release after checking it: the manifest verifies with an imported key of its
    /// vendor, and the image has the manifest's size and digest. The image is stored under its
    /// digest. Uploading the same release again changes nothing; another image with a sequence
    /// number already used for the class is refused.
    pub async fn upload_release(
        &self,
        manifest: &[u8],
        image: &[u8],
        sbom: Option<&[u8]>,
    ) -> Result<Release, OperatorError> {
        let unverified = Manifest::parse_unverified(manifest)
            .map_err(protocol::manifest::ManifestError::from)?;
        let verified = self
            .firmware_keys()?
            .iter()
            .filter(|k| k.vendor_id == unverified.vendor_id)
            .filter_map(|k| protocol::keys::PublicKey::ed25519(&k.key).ok())
            .find_map(|k| Manifest::open(manifest, &k).ok())
            .ok_or_else(|| OperatorError::UntrustedRelease(unverified.vendor_id.clone()))?;
        verified.check_image(image.len() as u64, &protocol::manifest::sha256(image))?;
        let sbom_info = crate::core::sbom::check(&verified, sbom)?;
        if let Some(existing) = self.store.release(&verified.digest)? {
            return Ok(existing);
        }
        // The image (and SBOM) first: a release is only on record once they are there to serve.
        let images = self.images.clone();
        let mut blobs = vec![(verified.digest.clone(), image.to_vec())];
        if let (Some(info), Some(document)) = (&sbom_info, sbom) {
            blobs.push((info.digest.clone(), document.to_vec()));
        }
        tokio::task::spawn_blocking(move || {
            blobs
                .iter()
                .try_for_each(|(digest, bytes)| images.put(digest, bytes))
        })
        .await
        .map_err(|e| OperatorError::Internal(e.to_string()))??;
        self.commit(|now| {
            if let Some(clash) = self.store.releases()?.into_iter().find(|r| {
                r.vendor_id == verified.vendor_id
                    && r.class_id == verified.class_id
                    && r.sequence == verified.sequence
                    && r.digest != verified.digest
            }) {
                return Err(OperatorError::BadInput(format!(
                    "sequence {} is already release {} of {}",
                    clash.sequence, clash.version, clash.class_id
                )));
            }
            let release = Release {
                digest: verified.digest.clone(),
                manifest: manifest.to_vec(),
                vendor_id: verified.vendor_id.clone(),
                class_id: verified.class_id.clone(),
                sequence: verified.sequence,
                version: verified.version.clone(),
                size: verified.size,
                uploaded_at: now,
                sbom: sbom_info.clone(),
            };
            let mut change = Change {
                releases: vec![release.clone()],
                audit: vec![AuditEvent::operator(
                    None,
                    "firmware-uploaded",
                    format!(
                        "{} {} sequence {} sha256:{}",
                        release.class_id,
                        release.version,
                        release.sequence,
                        certs::inspect::hex(&release.digest)
                    ),
                    now,
                )],
                ..Change::default()
            };
            // The manufacturer's signed end of support for the class, in the same write.
            let current = self.support_of(Some(verified.class_id.as_str()));
            let period = crate::core::support::from_manifest(&verified, current.as_ref(), now);
            if let Some(p) = &period {
                change.meta.push((
                    format!("{}{}", super::support::PERIOD, p.class),
                    serde_json::to_vec(p).map_err(|e| OperatorError::Internal(e.to_string()))?,
                ));
                change.audit.push(AuditEvent::operator(
                    None,
                    "support-period-set",
                    format!(
                        "security updates for {} end on {} (the manufacturer's signed manifest of {}); devices told {} days ahead",
                        p.class,
                        crate::core::support::date(p.ends_on),
                        release.version,
                        p.notice_days
                    ),
                    now,
                ));
            }
            Ok(Pending::of(change, (release, period)))
        })
        .await
        .map(|(release, period)| {
            if let Some(p) = &period {
                self.took_support(p);
            }
            release
        })
    }

    /// The SBOM of `release` and its document.
    pub fn release_sbom(
        &self,
        release: &Release,
    ) -> Result<(crate::core::sbom::SbomInfo, Vec<u8>), OperatorError> {
        let info = release.sbom.clone().ok_or_else(|| {
            OperatorError::NotFound(format!("an SBOM of release {}", release.version))
        })?;
        let size =
            u32::try_from(info.size).map_err(|_| OperatorError::Internal("SBOM size".into()))?;
        let document = self.images.read(&info.digest, 0, size)?;
        Ok((info, document))
    }

    /// The release device `id` runs now (its class and the sequence it reported), if the
    /// onboarder has it.
    pub fn running_release(&self, id: &crate::core::DeviceId) -> Result<Release, OperatorError> {
        let record = self.device(id)?;
        let releases = self.store.releases()?;
        crate::core::label::running(&record, &releases)
            .cloned()
            .ok_or_else(|| {
                OperatorError::NotFound(format!(
                    "the release {id} runs ({} sequence {})",
                    record.class_id.as_deref().unwrap_or("no class"),
                    record.firmware_sequence
                ))
            })
    }

    /// Every release.
    pub fn releases(&self) -> Result<Vec<Release>, OperatorError> {
        Ok(self.store.releases()?)
    }

    /// A release by its digest (hex) or its version (when only one release has it).
    pub fn find_release(&self, name: &str) -> Result<Release, OperatorError> {
        if let Some(digest) = certs::inspect::unhex(name)
            && let Some(r) = self.store.release(&digest)?
        {
            return Ok(r);
        }
        let mut matches: Vec<Release> = self
            .releases()?
            .into_iter()
            .filter(|r| r.version == name)
            .collect();
        match matches.len() {
            1 => Ok(matches.remove(0)),
            0 => Err(OperatorError::NotFound(format!("release {name}"))),
            _ => Err(OperatorError::BadInput(format!(
                "version {name} is ambiguous; use the digest"
            ))),
        }
    }
}
