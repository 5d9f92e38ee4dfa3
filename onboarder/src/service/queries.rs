//! Reads for operators: devices by name, lists and counts, the audit log and its chain, the
//! progress of rotations, certificates of sanitization, and the report of an import.

use serde::{Deserialize, Serialize};

use super::search::SearchPage;
use super::{OperatorError, Outcome, Service};
use crate::audit::{AuditEntry, AuditEvent, ChainSummary, ChainVerifier};
use crate::core::import::{Anchor, Filed};
use crate::core::query::{DeviceQuery, Labels};
use crate::core::record::RotationState;
use crate::core::sanitization::{self, SanitizationCertificate};
use crate::core::{DeviceId, DeviceRecord, DeviceState, MakerId};
use crate::store::Change;

use super::RotationStatus;

/// Devices read per page when a query walks them all.
const PAGE: usize = 1000;
/// Audit entries read per page while verifying the chain.
const AUDIT_PAGE: usize = 4096;
/// The outcome of a bulk voucher import.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

impl ImportReport {
    /// Adds the report of another bundle of the same import to this one.
    pub fn add(&mut self, other: ImportReport) {
        self.imported += other.imported;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.unverified += other.unverified;
        self.rejected.extend(other.rejected);
    }

    pub(super) fn count(&mut self, filed: &Filed, outcome: &Outcome) {
        match (outcome.wrote, outcome.existed) {
            (false, _) => self.unchanged += 1,
            (true, false) => self.imported += 1,
            (true, true) => self.updated += 1,
        }
        if outcome.wrote && !filed.checked {
            self.unverified += 1;
        }
    }
}

/// One refused voucher of an import.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Position in the bundle.
    pub index: usize,
    /// Serial, when the voucher could be read.
    pub serial: Option<String>,
    /// Why.
    pub reason: String,
}

impl Service {
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

    /// Walks every device record, page by page.
    pub(crate) fn each_device(
        &self,
        mut visit: impl FnMut(&DeviceRecord),
    ) -> Result<(), OperatorError> {
        let mut after: Option<DeviceId> = None;
        loop {
            let page = self.store.devices(after.as_ref(), PAGE)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.id.clone());
            page.iter().for_each(&mut visit);
        }
    }

    /// The devices in `state`, from the device index.
    pub(crate) fn devices_in(&self, state: DeviceState) -> Result<Vec<DeviceId>, OperatorError> {
        let prefix = format!("{}/", crate::store::state_tally(&state));
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.index(&prefix, after.as_deref(), PAGE)?;
            let full = page.len() == PAGE;
            after = page.last().map(|(k, _)| k.clone());
            out.extend(page.into_iter().map(|(_, id)| id));
            if !full {
                return Ok(out);
            }
        }
    }

    /// One page of the devices `query` matches (see [`super::search::search`]).
    pub fn search(
        &self,
        query: &DeviceQuery,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SearchPage, OperatorError> {
        super::search::search(self.store.as_ref(), query, after, limit)
    }

    /// Changes the operator labels (tags, attributes) of `id`.
    pub async fn label(
        &self,
        id: &DeviceId,
        labels: &Labels,
    ) -> Result<DeviceRecord, OperatorError> {
        labels.validate().map_err(bad_input)?;
        self.decide_device(id, |record, now| {
            crate::core::query::label(id, record, labels, now)
        })
        .await?;
        self.device(id)
    }

    /// Number of devices in each state: tallies the store moves with every device write, so
    /// one read whatever the size of the fleet.
    pub fn state_counts(&self) -> Result<std::collections::BTreeMap<String, u64>, OperatorError> {
        Ok(self
            .store
            .tallies()?
            .into_iter()
            .filter_map(|(name, n)| {
                let state = name.strip_prefix("state/")?;
                Some((state.to_string(), u64::try_from(n).ok().filter(|n| *n > 0)?))
            })
            .collect())
    }

    /// Imported manufacturer anchors.
    pub fn anchors(&self) -> Result<Vec<Anchor>, OperatorError> {
        Ok(self.store.anchors()?)
    }

    /// Audit entries from `from`.
    pub fn audit_entries(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, OperatorError> {
        Ok(self.store.audit(from, limit)?)
    }

    /// Verifies the whole audit chain against the recorded head: the entries up to the head
    /// read first (entries appended while it runs are the next verification's; reading them
    /// against the older head would report a chain that is whole as altered).
    pub fn verify_audit(&self) -> Result<ChainSummary, OperatorError> {
        let (head_seq, head) = self.store.audit_head()?;
        let mut verifier = ChainVerifier::default();
        let mut from = 1;
        while from <= head_seq {
            let page = self.store.audit(from, AUDIT_PAGE)?;
            for entry in page.iter().take_while(|e| e.seq <= head_seq) {
                verifier.push(entry)?;
            }
            match page.last() {
                Some(last) if page.len() == AUDIT_PAGE => from = last.seq + 1,
                _ => break,
            }
        }
        Ok(verifier.finish(&head)?)
    }

    /// How the rotations ordered at or after `since` went.
    pub fn rotation_status(&self, since: u64) -> Result<RotationStatus, OperatorError> {
        let mut status = RotationStatus::default();
        self.each_device(|d| {
            let Some(r) = d.rotation.as_ref().filter(|r| r.requested_at >= since) else {
                return;
            };
            match &r.state {
                RotationState::Done { .. } => status.rotated += 1,
                RotationState::Pending => {
                    status.pending += 1;
                    status.pending_devices.push(d.id.clone());
                }
                RotationState::Failed { reason } => {
                    status.failed += 1;
                    status.failures.push((d.id.clone(), reason.clone()));
                }
            }
        })?;
        Ok(status)
    }

    /// The certificate of sanitization of an attested decommissioning.
    pub fn sanitization_certificate(
        &self,
        id: &DeviceId,
    ) -> Result<SanitizationCertificate, OperatorError> {
        let record = self.device(id)?;
        let organization = self.registrar().policy.organization.clone();
        sanitization::certify(&record, &organization).map_err(|e| match e {
            crate::core::LifecycleError::Unavailable(m) => OperatorError::Internal(m),
            other => other.into(),
        })
    }
}

impl Service {
    /// The ciphertext device `id` handed back before its wipe, once complete.
    pub fn exported_data(&self, id: &DeviceId) -> Result<Vec<u8>, OperatorError> {
        let record = self.device(id)?;
        let export = record
            .decommission
            .and_then(|d| d.export)
            .filter(|e| e.completed_at.is_some())
            .ok_or_else(|| OperatorError::NotFound(format!("data handed back by {id}")))?;
        let size = u32::try_from(export.total)
            .map_err(|_| OperatorError::Internal("export size".into()))?;
        Ok(self.images.read(&export.digest, 0, size)?)
    }
}

/// Prefix of the named values holding saved queries.
const SAVED_QUERY: &str = "query/";

impl Service {
    /// Saves `query` under `name` (replacing one of that name): a group of devices that
    /// campaigns and the dashboard can name.
    pub async fn save_query(&self, name: &str, query: &DeviceQuery) -> Result<(), OperatorError> {
        crate::core::query::label_ok(name).map_err(bad_input)?;
        if name.contains('/') {
            return Err(OperatorError::BadInput("a query's name has no '/'".into()));
        }
        query.validate().map_err(bad_input)?;
        let value =
            serde_json::to_vec(query).map_err(|e| OperatorError::Internal(e.to_string()))?;
        self.commit(|now| {
            let change = Change {
                meta: vec![(format!("{SAVED_QUERY}{name}"), value.clone())],
                audit: vec![AuditEvent::operator(
                    None,
                    "query-saved",
                    format!("{name}: {}", String::from_utf8_lossy(&value)),
                    now,
                )],
                ..Change::default()
            };
            Ok::<_, OperatorError>(super::Pending::of(change, ()))
        })
        .await
    }

    /// The saved query `name`.
    pub fn saved_query(&self, name: &str) -> Result<DeviceQuery, OperatorError> {
        let value = self
            .store
            .meta(&format!("{SAVED_QUERY}{name}"))?
            .ok_or_else(|| OperatorError::NotFound(format!("saved query {name}")))?;
        decode_query(name, &value)
    }

    /// Every saved query, by name.
    pub fn saved_queries(
        &self,
    ) -> Result<std::collections::BTreeMap<String, DeviceQuery>, OperatorError> {
        self.store
            .meta_prefix(SAVED_QUERY)?
            .into_iter()
            .map(|(key, value)| {
                let name = key.trim_start_matches(SAVED_QUERY).to_string();
                let query = decode_query(&name, &value)?;
                Ok((name, query))
            })
            .collect()
    }
}

/// A malformed operator input, refused as such (not as a lifecycle refusal).
fn bad_input(e: crate::core::LifecycleError) -> OperatorError {
    OperatorError::BadInput(e.to_string())
}

fn decode_query(name: &str, value: &[u8]) -> Result<DeviceQuery, OperatorError> {
    serde_json::from_slice(value)
        .map_err(|e| OperatorError::Internal(format!("saved query {name} is corrupt: {e}")))
}
