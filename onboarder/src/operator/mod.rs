//! What an operator can do, as methods of the [`Service`]; the HTTP API and the CLI are thin
//! layers over these.

pub mod api;
pub mod client;
pub mod control;
pub mod firmware;
pub mod orders;
pub mod sanitization;
pub mod terminal;
pub mod views;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::audit::{AuditEntry, AuditError, AuditEvent, ChainSummary, ChainVerifier};
use crate::core::{DeviceId, DeviceRecord, DeviceState, MakerId};
use crate::service::Service;
use crate::store::{Anchor, Change, DeviceWrite, Expect, StoreError};

/// Vouchers committed per atomic write during a bulk import.
const IMPORT_CHUNK: usize = 1000;
/// Audit entries read per page while verifying the chain.
const AUDIT_PAGE: usize = 4096;

/// Why an operator request failed.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum OperatorError {
    /// The input is not acceptable.
    #[error("{0}")]
    BadInput(String),
    /// No such thing.
    #[error("{0} not found")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit chain is broken.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The lifecycle rules refuse the order.
    #[error(transparent)]
    Refused(crate::core::LifecycleError),
    /// The onboarder could not carry the order out (its PKI files, a background task): nothing
    /// in the order was wrong.
    #[error("{0}")]
    Internal(String),
}

/// The outcome of a bulk voucher import.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// New devices now expected.
    pub imported: usize,
    /// Devices whose voucher was replaced (for example a renewed voucher).
    pub updated: usize,
    /// Vouchers already on file.
    pub unchanged: usize,
    /// Vouchers accepted without a signature check: their manufacturer was imported without
    /// its voucher-signing (MASA) certificate. Devices still check the signature.
    #[serde(default)]
    pub unverified: usize,
    /// Vouchers refused, with why.
    pub rejected: Vec<Rejected>,
}

/// One refused voucher of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Position in the bundle.
    pub index: usize,
    /// Serial, when the voucher could be read.
    pub serial: Option<String>,
    /// Why.
    pub reason: String,
}

/// What an operator imports to trust a manufacturer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorImport {
    /// The manufacturer's root CA certificate(s), PEM.
    pub pem: String,
    /// Its voucher-signing (MASA) certificate, PEM: vouchers are then verified at import.
    #[serde(default)]
    pub masa_pem: Option<String>,
    /// A short name for the manufacturer (`acme`), unique among them, that commands accept in
    /// place of its maker id. Default: from the certificate's organization.
    #[serde(default)]
    pub name: Option<String>,
}

enum Planned {
    Write(Box<DeviceWrite>, AuditEvent, bool),
    Unchanged,
    Rejected(Rejected),
}

/// A manufacturer's voucher signer, parsed once per import.
struct Signer {
    maker: MakerId,
    key_id: Option<Vec<u8>>,
    masa: Option<protocol::keys::PublicKey>,
}

impl Service {
    /// Imports a manufacturer's root CA certificate(s) as trust anchors for IDevIDs, with its
    /// voucher signer and a name. Importing an anchor again updates its name and voucher
    /// signer when they are given.
    pub async fn import_anchor(&self, import: &AnchorImport) -> Result<Vec<Anchor>, OperatorError> {
        let bad = |m: String| OperatorError::BadInput(m);
        let ders = certs::files::certs_from_pem(&import.pem).map_err(|e| bad(e.to_string()))?;
        if ders.is_empty() {
            return Err(bad("no CERTIFICATE in the input".into()));
        }
        let masa = match &import.masa_pem {
            Some(pem) => {
                let certs = certs::files::certs_from_pem(pem).map_err(|e| bad(e.to_string()))?;
                let [der] = certs.as_slice() else {
                    return Err(bad("the MASA PEM must hold exactly one certificate".into()));
                };
                certs::CertInfo::parse(der).map_err(|e| bad(format!("MASA certificate: {e}")))?;
                Some(der.clone())
            }
            None => None,
        };
        if let Some(name) = &import.name {
            check_maker_name(name).map_err(bad)?;
        }
        let ours: Vec<Vec<u8>> = std::iter::once(self.owner_root.clone())
            .chain(
                self.registrar()
                    .generations()
                    .map(|g| g.ca.cert_der().to_vec()),
            )
            .filter_map(|der| certs::CertInfo::parse(&der).ok().map(|i| i.spki_der))
            .collect();
        let now = self.now();
        let mut existing = self.store.anchors()?;
        let mut changed = Vec::new();
        let mut audit = Vec::new();
        for der in ders {
            let info = certs::CertInfo::parse(&der).map_err(|e| bad(e.to_string()))?;
            if !info.is_ca {
                return Err(bad(format!("{} is not a CA certificate", info.subject)));
            }
            crate::trust::TrustStore::check_anchor(&der).map_err(bad)?;
            if ours.contains(&info.spki_der) {
                return Err(bad(format!(
                    "{} is this owner's own CA, not a manufacturer's",
                    info.subject
                )));
            }
            let maker = MakerId::of_spki(&info.spki_der);
            let fingerprint = sha256_hex(&der);
            let same_maker = existing.iter().find(|a| a.maker == maker);
            let name = match (&import.name, same_maker) {
                (Some(name), _) => name.clone(),
                (None, Some(a)) => a.name.clone(),
                (None, None) => unique_name(&derived_name(&info), &existing),
            };
            if let Some(other) = existing.iter().find(|a| a.name == name && a.maker != maker) {
                return Err(bad(format!(
                    "the name {name:?} is taken by maker {} ({})",
                    other.maker, other.subject
                )));
            }
            let previous = existing.iter().find(|a| a.fingerprint == fingerprint);
            let anchor = Anchor {
                fingerprint: fingerprint.clone(),
                subject: info.subject.clone(),
                der: der.clone(),
                added_at: previous.map_or(now, |a| a.added_at),
                maker: maker.clone(),
                name,
                key_id: info.subject_key_id.clone(),
                masa: masa
                    .clone()
                    .or_else(|| previous.and_then(|a| a.masa.clone())),
            };
            let action = match previous {
                Some(p) if *p == anchor => continue,
                Some(_) => "anchor-updated",
                None => "anchor-imported",
            };
            audit.push(AuditEvent::operator(
                None,
                action,
                format!(
                    "{} sha256:{} as maker {} ({}){}",
                    anchor.subject,
                    anchor.fingerprint,
                    anchor.maker,
                    anchor.name,
                    if anchor.masa.is_some() {
                        ", with its voucher signer"
                    } else {
                        ""
                    }
                ),
                now,
            ));
            existing.retain(|a| a.fingerprint != fingerprint);
            existing.push(anchor.clone());
            changed.push(anchor);
        }
        self.store
            .commit(Change {
                anchors: changed.clone(),
                audit,
                ..Change::default()
            })
            .await?;
        self.reload_trust()?;
        Ok(changed)
    }

    /// Imports a bundle of vouchers (see [`protocol::voucher::encode_bundle`]). Each voucher
    /// must belong to an imported manufacturer: signed by its voucher signer when the operator
    /// gave it (otherwise naming one of its anchors as `idevid-issuer`), and it is filed under
    /// that maker and the voucher's serial. It must pin our owner root and not have expired.
    pub async fn import_vouchers(&self, bundle: &[u8]) -> Result<ImportReport, OperatorError> {
        let vouchers = protocol::voucher::decode_bundle(bundle)
            .map_err(|e| OperatorError::BadInput(format!("voucher bundle: {e}")))?;
        let signers: Vec<Signer> = self
            .store
            .anchors()?
            .into_iter()
            .map(|a| Signer {
                masa: a
                    .masa
                    .as_deref()
                    .and_then(|der| certs::CertInfo::parse(der).ok())
                    .map(|i| i.public_key),
                maker: a.maker,
                key_id: a.key_id,
            })
            .collect();
        let mut report = ImportReport::default();
        let numbered: Vec<(usize, Vec<u8>)> = vouchers.into_iter().enumerate().collect();
        for chunk in numbered.chunks(IMPORT_CHUNK) {
            self.import_chunk(chunk, &signers, &mut report).await?;
        }
        Ok(report)
    }

    async fn import_chunk(
        &self,
        chunk: &[(usize, Vec<u8>)],
        signers: &[Signer],
        report: &mut ImportReport,
    ) -> Result<(), OperatorError> {
        for _ in 0..8 {
            let now = self.now();
            let mut seen = std::collections::HashSet::new();
            let mut planned = Vec::with_capacity(chunk.len());
            let mut unverified = 0;
            for (index, bytes) in chunk {
                let (plan, checked) = self.plan_voucher(*index, bytes, signers, now, &mut seen)?;
                if !checked && matches!(plan, Planned::Write(..)) {
                    unverified += 1;
                }
                planned.push(plan);
            }
            let mut change = Change::default();
            let mut partial = ImportReport {
                unverified,
                ..ImportReport::default()
            };
            for p in planned {
                match p {
                    Planned::Write(write, event, is_new) => {
                        change.devices.push(*write);
                        change.audit.push(event);
                        if is_new {
                            partial.imported += 1;
                        } else {
                            partial.updated += 1;
                        }
                    }
                    Planned::Unchanged => partial.unchanged += 1,
                    Planned::Rejected(r) => partial.rejected.push(r),
                }
            }
            match self.store.commit(change).await {
                Ok(()) => {
                    report.imported += partial.imported;
                    report.updated += partial.updated;
                    report.unchanged += partial.unchanged;
                    report.unverified += partial.unverified;
                    report.rejected.extend(partial.rejected);
                    return Ok(());
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict("devices kept changing during the import".into()).into())
    }

    /// What to do with one voucher of an import, and whether its signature was checked.
    fn plan_voucher(
        &self,
        index: usize,
        bytes: &[u8],
        signers: &[Signer],
        now: u64,
        seen: &mut std::collections::HashSet<DeviceId>,
    ) -> Result<(Planned, bool), OperatorError> {
        let reject = |serial: Option<String>, reason: String| {
            Ok((
                Planned::Rejected(Rejected {
                    index,
                    serial,
                    reason,
                }),
                false,
            ))
        };
        let voucher = match protocol::voucher::Voucher::parse_unverified(bytes) {
            Ok(v) => v,
            Err(e) => return reject(None, e.to_string()),
        };
        let serial = voucher.serial_number.clone();
        if let Err(e) = certs::profile::validate_serial(&serial) {
            return reject(Some(serial), e.to_string());
        }
        let (maker, checked) = match voucher_maker(&voucher, bytes, signers) {
            Ok(found) => found,
            Err(reason) => return reject(Some(serial), reason),
        };
        let id = DeviceId {
            maker,
            serial: serial.clone(),
        };
        if voucher.pinned_domain_cert != self.owner_root {
            return reject(Some(serial), "the voucher pins another owner's CA".into());
        }
        match voucher.expires_on {
            Some(e) if e <= now => return reject(Some(serial), format!("expired at {e}")),
            None => return reject(Some(serial), "a bulk voucher needs an expiry".into()),
            Some(_) => {}
        }
        if !seen.insert(id.clone()) {
            return reject(Some(serial), "duplicate device in the bundle".into());
        }
        let record = self.store.device(&id)?;
        let expect = Expect::from(record.as_ref());
        let plan = match record {
            None => Planned::Write(
                Box::new(DeviceWrite {
                    record: DeviceRecord::expected(
                        id.clone(),
                        bytes.to_vec(),
                        voucher.expires_on,
                        now,
                    ),
                    expect,
                }),
                AuditEvent::operator(Some(&id), "voucher-imported", "", now),
                true,
            ),
            Some(r) if r.voucher.as_deref() == Some(bytes) => Planned::Unchanged,
            Some(mut r) if matches!(r.state, DeviceState::Expected | DeviceState::Onboarding) => {
                r.voucher = Some(bytes.to_vec());
                r.voucher_expires_on = voucher.expires_on;
                r.updated_at = now;
                Planned::Write(
                    Box::new(DeviceWrite { record: r, expect }),
                    AuditEvent::operator(Some(&id), "voucher-replaced", "", now),
                    false,
                )
            }
            Some(r) => return reject(Some(serial), format!("{id} is {}", r.state)),
        };
        Ok((plan, checked))
    }

    /// The device an operator names: `MAKER/SERIAL` (maker id or name), or a bare `SERIAL`
    /// when exactly one manufacturer has a device with it.
    pub fn resolve(&self, reference: &str) -> Result<DeviceId, OperatorError> {
        let anchors = self.store.anchors()?;
        if let Some((maker, serial)) = reference.split_once('/') {
            let maker = anchors
                .iter()
                .find(|a| a.name == maker)
                .map(|a| a.maker.clone())
                .or_else(|| maker.parse::<MakerId>().ok())
                .ok_or_else(|| OperatorError::NotFound(format!("manufacturer {maker:?}")))?;
            return DeviceId::new(maker, serial)
                .map_err(|e| OperatorError::BadInput(e.to_string()));
        }
        let mut makers: Vec<&MakerId> = anchors.iter().map(|a| &a.maker).collect();
        makers.sort();
        makers.dedup();
        let mut found = Vec::new();
        for maker in makers {
            let id = DeviceId::new(maker.clone(), reference)
                .map_err(|e| OperatorError::BadInput(e.to_string()))?;
            if self.store.device(&id)?.is_some() {
                found.push(id);
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(OperatorError::NotFound(format!("device {reference}"))),
            _ => {
                let named: Vec<String> = found
                    .iter()
                    .map(|id| {
                        let name = anchors.iter().find(|a| a.maker == id.maker);
                        format!(
                            "{}/{}",
                            name.map_or(id.maker.as_str(), |a| &a.name),
                            id.serial
                        )
                    })
                    .collect();
                Err(OperatorError::BadInput(format!(
                    "{reference} is ambiguous: {}; name the manufacturer",
                    named.join(", ")
                )))
            }
        }
    }

    /// One device.
    pub fn device(&self, id: &DeviceId) -> Result<DeviceRecord, OperatorError> {
        self.store
            .device(id)?
            .ok_or_else(|| OperatorError::NotFound(format!("device {id}")))
    }

    /// Devices in id order after `after`.
    pub fn devices(
        &self,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, OperatorError> {
        Ok(self.store.devices(after, limit)?)
    }

    /// Number of devices in each state.
    pub fn state_counts(&self) -> Result<std::collections::BTreeMap<String, u64>, OperatorError> {
        let mut counts = std::collections::BTreeMap::new();
        let mut after: Option<DeviceId> = None;
        loop {
            let page = self.store.devices(after.as_ref(), 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for d in &page {
                *counts.entry(d.state.to_string()).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    /// Imported manufacturer anchors.
    pub fn anchors(&self) -> Result<Vec<Anchor>, OperatorError> {
        Ok(self.store.anchors()?)
    }

    /// Audit entries from `from`.
    pub fn audit(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, OperatorError> {
        Ok(self.store.audit(from, limit)?)
    }

    /// Verifies the whole audit chain against the recorded head.
    pub fn verify_audit(&self) -> Result<ChainSummary, OperatorError> {
        let (_, head) = self.store.audit_head()?;
        let mut verifier = ChainVerifier::default();
        let mut from = 1;
        loop {
            let page = self.store.audit(from, AUDIT_PAGE)?;
            for entry in &page {
                verifier.push(entry)?;
            }
            match page.last() {
                Some(last) if page.len() == AUDIT_PAGE => from = last.seq + 1,
                _ => break,
            }
        }
        Ok(verifier.finish(&head)?)
    }
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    certs::inspect::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The maker a voucher belongs to, and whether its signature was checked: the manufacturer
/// whose voucher signer verifies it (and whose anchor it names, if it names one), or else the
/// manufacturer without a known signer whose anchor it names.
fn voucher_maker(
    voucher: &protocol::voucher::Voucher,
    bytes: &[u8],
    signers: &[Signer],
) -> Result<(MakerId, bool), String> {
    let names = |s: &Signer| match &voucher.idevid_issuer {
        Some(issuer) => s.key_id.as_ref() == Some(issuer),
        None => true,
    };
    let mut verified: Vec<&MakerId> = signers
        .iter()
        .filter(|s| names(s))
        .filter(|s| {
            s.masa
                .as_ref()
                .is_some_and(|k| protocol::voucher::Voucher::open(bytes, k).is_ok())
        })
        .map(|s| &s.maker)
        .collect();
    verified.sort();
    verified.dedup();
    match verified.as_slice() {
        [maker] => return Ok(((*maker).clone(), true)),
        [_, _, ..] => {
            return Err(
                "the voucher fits several manufacturers; it must name its idevid-issuer".into(),
            );
        }
        [] => {}
    }
    let issuer = voucher
        .idevid_issuer
        .as_ref()
        .ok_or("the voucher names no idevid-issuer and no imported voucher signer verifies it")?;
    let named: Vec<&Signer> = signers
        .iter()
        .filter(|s| s.key_id.as_ref() == Some(issuer))
        .collect();
    if named.iter().any(|s| s.masa.is_some()) {
        return Err(
            "the voucher's signature does not verify with its manufacturer's voucher signer".into(),
        );
    }
    match named.first() {
        Some(s) => Ok((s.maker.clone(), false)),
        None => Err(format!(
            "no imported manufacturer issues IDevIDs with key id {} (import its root with \
             `onboarder anchor import` first)",
            certs::inspect::hex(issuer)
        )),
    }
}

/// Checks an operator's name for a manufacturer.
fn check_maker_name(name: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && name.parse::<MakerId>().is_err();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid manufacturer name {name:?}: 1-32 characters of a-z 0-9 -, not a maker id"
        ))
    }
}

/// A name for a manufacturer from its certificate: its organization (or CN), in lower case
/// with dashes.
fn derived_name(info: &certs::CertInfo) -> String {
    let source = info
        .organization
        .as_deref()
        .or(info.common_name.as_deref())
        .unwrap_or("maker");
    let mut name = String::new();
    for c in source.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    let name: String = name.trim_end_matches('-').chars().take(24).collect();
    if check_maker_name(&name).is_ok() {
        name
    } else {
        "maker".into()
    }
}

/// `base`, or `base-2`, `base-3`, ... if another maker has it.
fn unique_name(base: &str, anchors: &[Anchor]) -> String {
    let taken = |n: &str| anchors.iter().any(|a| a.name == n);
    if !taken(base) {
        return base.to_string();
    }
    (2..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken(n))
        .unwrap_or_else(|| base.to_string())
}
