//! What a network access server (FreeRADIUS) asks: may this device on, and where; and what it
//! refused on its own. Every answer is audited before it is given (within the audit budget).
//!
//! Devices are found by the certificate's CN (an LDevID names its device there) or, for MAC
//! authorization, through an index of the MAC addresses devices reported, built from the
//! store the first time it is needed and kept current by every commit. The index only finds
//! the candidate: the decision reads the record and checks the address again, so an index a
//! step behind can miss a device but never answer for the wrong one.

use std::collections::{BTreeSet, HashMap};

use super::{Pending, Service};
use crate::audit::AuditEvent;
use crate::core::network_access::{self, Access, normalize_mac, reported_mac};
use crate::core::{DeviceId, DeviceRecord};
use crate::store::{Change, StoreError};

/// Devices by the MAC address they reported, and each device's address.
#[derive(Default)]
pub(crate) struct MacIndex {
    by_mac: HashMap<String, BTreeSet<DeviceId>>,
    of_device: HashMap<DeviceId, String>,
}

impl MacIndex {
    fn note(&mut self, record: &DeviceRecord) {
        let mac = reported_mac(record);
        let old = self.of_device.get(&record.id).cloned();
        if old == mac {
            return;
        }
        if let Some(old) = old {
            if let Some(ids) = self.by_mac.get_mut(&old) {
                ids.remove(&record.id);
                if ids.is_empty() {
                    self.by_mac.remove(&old);
                }
            }
            self.of_device.remove(&record.id);
        }
        if let Some(mac) = mac {
            self.by_mac
                .entry(mac.clone())
                .or_default()
                .insert(record.id.clone());
            self.of_device.insert(record.id.clone(), mac);
        }
    }
}

/// Who asks, for the audit log: the access server's view of the request.
#[derive(Debug, Clone, Default)]
pub struct AccessContext {
    /// The access point or switch (NAS-Identifier, else its address).
    pub nas: Option<String>,
    /// The station's MAC address (Calling-Station-Id).
    pub station: Option<String>,
}

impl AccessContext {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(nas) = &self.nas {
            parts.push(format!("at {nas}"));
        }
        if let Some(station) = &self.station {
            parts.push(format!("station {station}"));
        }
        parts.join(", ")
    }
}

/// Longest text from the access server copied into the audit log.
const MAX_REPORTED: usize = 200;

impl Service {
    /// EAP-TLS: whether the device named by its certificate's CN (`common_name`) may use the
    /// certificate with serial `cert_serial` (hex) now.
    pub async fn network_access_by_certificate(
        &self,
        common_name: &str,
        cert_serial: &str,
        context: &AccessContext,
    ) -> Result<Access, StoreError> {
        let now = self.now();
        let access = match common_name.parse::<DeviceId>() {
            Ok(id) => {
                let record = self.store.device(&id)?;
                let registrar = self.registrar();
                network_access::by_certificate(
                    &id,
                    record.as_ref(),
                    cert_serial,
                    now,
                    registrar.policy.superseded_grace,
                    &registrar.policy.network_access,
                )
            }
            Err(_) => Access::Refused {
                device: None,
                reason: format!("{} names no device of ours", clip(common_name)),
            },
        };
        let method = format!("EAP-TLS with certificate {}", clip(cert_serial));
        self.audit_access(&access, &method, context, now).await?;
        Ok(access)
    }

    /// MAC authorization: whether the device that reported the MAC address `mac` may join
    /// with its own passphrase, which the answer carries.
    pub async fn network_access_by_mac(
        &self,
        mac: &str,
        context: &AccessContext,
    ) -> Result<Access, StoreError> {
        let now = self.now();
        let access = match normalize_mac(mac) {
            None => Access::Refused {
                device: None,
                reason: format!("{} is not a MAC address", clip(mac)),
            },
            Some(mac) => {
                let candidates = self.devices_with_mac(&mac)?;
                let policy = &self.registrar().policy.network_access;
                match candidates.as_slice() {
                    [id] => network_access::by_mac(&mac, self.store.device(id)?.as_ref(), policy),
                    [] => network_access::by_mac(&mac, None, policy),
                    many => Access::Refused {
                        device: None,
                        reason: format!(
                            "{} devices reported MAC address {mac}; none is given its passphrase",
                            many.len()
                        ),
                    },
                }
            }
        };
        self.audit_access(&access, "MAC authorization", context, now)
            .await?;
        Ok(access)
    }

    /// Records a refusal the access server decided on its own (a certificate that did not
    /// verify, one the CRL lists, another CA's), with the reason it gave.
    pub async fn network_access_refused_elsewhere(
        &self,
        common_name: Option<&str>,
        reason: &str,
        context: &AccessContext,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let device = common_name.and_then(|cn| cn.parse::<DeviceId>().ok());
        let identity = common_name.map_or_else(String::new, |cn| format!(" for {}", clip(cn)));
        let access = Access::Refused {
            device,
            reason: format!("the access server refused{identity}: {}", clip(reason)),
        };
        self.audit_access(&access, "RADIUS", context, now).await
    }

    /// Writes the audit entry of an access decision, within the audit budget, and waits until
    /// it is durable: an answer is never given without its entry.
    async fn audit_access(
        &self,
        access: &Access,
        method: &str,
        context: &AccessContext,
        now: u64,
    ) -> Result<(), StoreError> {
        let whom = context.describe();
        let whom = if whom.is_empty() {
            String::new()
        } else {
            format!(" ({whom})")
        };
        let event = match access {
            Access::Granted {
                device,
                placement,
                quarantined,
                ..
            } => {
                let mut detail = format!("{method}{whom}");
                if *quarantined {
                    detail.push_str(", into quarantine");
                }
                if let Some(vlan) = &placement.vlan {
                    detail.push_str(&format!(", VLAN {vlan}"));
                }
                if let Some(filter) = &placement.filter_id {
                    detail.push_str(&format!(", filter {filter}"));
                }
                AuditEvent::device(device, "network-access-granted", detail, now)
            }
            Access::Refused { device, reason } => AuditEvent {
                at: now,
                actor: "network".into(),
                device: device.clone(),
                action: "network-access-refused".into(),
                detail: format!("{method}{whom}: {reason}"),
            },
        };
        let audit = self.within_budget(
            vec![event],
            |e| {
                let who = e.device.as_ref().map_or("unknown", |d| d.serial.as_str());
                format!("{}:{who}", e.action)
            },
            now,
        );
        if audit.is_empty() {
            return Ok(());
        }
        let change = Change {
            audit,
            ..Change::default()
        };
        self.commit(|_| Ok::<_, StoreError>(Pending::of(change.clone(), ())))
            .await
    }

    /// The devices that reported `mac` (normalised), from the index (built on first use).
    fn devices_with_mac(&self, mac: &str) -> Result<Vec<DeviceId>, StoreError> {
        let mut guard = self.macs.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            // Built under the lock: a commit that lands meanwhile notes its records after.
            let mut index = MacIndex::default();
            let mut after: Option<DeviceId> = None;
            loop {
                let page = self.store.devices(after.as_ref(), 1000)?;
                for record in &page {
                    index.note(record);
                }
                match page.last() {
                    Some(last) if page.len() == 1000 => after = Some(last.id.clone()),
                    _ => break,
                }
            }
            *guard = Some(index);
        }
        Ok(guard
            .as_ref()
            .and_then(|i| i.by_mac.get(mac))
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default())
    }

    /// Keeps the MAC index (once built) current with records just committed.
    pub(super) fn note_macs(&self, records: &[DeviceRecord]) {
        if let Some(index) = self.macs.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            for record in records {
                index.note(record);
            }
        }
    }
}

/// `text` cut to what the audit log takes from the access server.
fn clip(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_REPORTED)
        .collect()
}
