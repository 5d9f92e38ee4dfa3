//! What every crash, kill or failure must leave true: one checker for every crash test and
//! every phase, reading the server from outside (its admin API and public CRLs) and a device
//! from its disk.
//!
//! Safety holds at every moment, right after a restart: each device once, each certificate
//! once and live at most once per role, the audit chain whole. Settled holds once the orders
//! given have run their course: each device in the state its orders imply with one live
//! certificate, and every revoked certificate on its CA's CRL. A device boots a verified image
//! of a sequence never below the highest it committed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::core::{CertStatus, DeviceState};
use crate::operator::client::ApiClient;
use crate::operator::views::DeviceView;

/// What the orders given so far imply.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// Devices the store holds: no more, no fewer.
    pub devices: usize,
    /// The state each named device must end in (devices not named may be in any state).
    pub states: BTreeMap<String, DeviceState>,
    /// The firmware version each named device must end on.
    pub firmware: BTreeMap<String, String>,
    /// Devices that must hold a certificate issued at or after a moment (seconds since the
    /// epoch), by serial: a rotation ordered then reached them.
    pub renewed: BTreeMap<String, u64>,
    /// Every active device's live certificate must be of this issuing CA generation: a CA
    /// rollover reached it.
    pub generation: Option<u32>,
}

/// The violations of the invariants that hold at every moment (empty: none).
pub fn safety(api: &ApiClient, expected: &Expected) -> Vec<String> {
    read(api, expected).0
}

/// The audit chain and the records checked, and the records read.
fn read(api: &ApiClient, expected: &Expected) -> (Vec<String>, Option<Vec<DeviceView>>) {
    let mut violations = Vec::new();
    if let Err(e) = api.verify_audit() {
        violations.push(format!("the audit chain does not verify: {e}"));
    }
    match api.devices() {
        Ok(devices) => {
            violations.extend(records(&devices, expected));
            (violations, Some(devices))
        }
        Err(e) => {
            violations.push(format!("the devices cannot be listed: {e}"));
            (violations, None)
        }
    }
}

/// The violations of every invariant, the settled ones included (empty: none).
pub fn settled(api: &ApiClient, expected: &Expected) -> Vec<String> {
    let (mut violations, devices) = read(api, expected);
    let Some(devices) = devices else {
        return violations;
    };
    for d in &devices {
        let live = d
            .certificates
            .iter()
            .filter(|c| matches!(c.status, CertStatus::Active | CertStatus::Issued))
            .count();
        let name = &d.serial;
        if let Some(want) = expected.states.get(name)
            && *want != d.state
        {
            violations.push(format!(
                "{name} is {:?}, its orders imply {want:?}",
                d.state
            ));
        }
        if let Some(want) = expected.firmware.get(name)
            && d.firmware_version.as_deref() != Some(want.as_str())
        {
            violations.push(format!(
                "{name} runs {:?}, its campaign brings {want}",
                d.firmware_version
            ));
        }
        match d.state {
            DeviceState::Active if live != 1 => {
                violations.push(format!("{name} is active with {live} live certificates"));
            }
            DeviceState::Decommissioned | DeviceState::DecommissionedUnattested if live != 0 => {
                violations.push(format!(
                    "{name} is {:?} with {live} live certificates",
                    d.state
                ));
            }
            DeviceState::Decommissioned if d.network.is_some() => {
                violations.push(format!(
                    "{name} is decommissioned and keeps network credentials"
                ));
            }
            _ => {}
        }
        if let (Some(want), DeviceState::Active) = (expected.generation, d.state)
            && let Some(c) = d
                .certificates
                .iter()
                .find(|c| matches!(c.status, CertStatus::Active | CertStatus::Issued))
            && c.generation != Some(want)
        {
            violations.push(format!(
                "{name}'s certificate is of CA generation {:?}, the rollover brings {want}",
                c.generation
            ));
        }
        if let (Some(after), DeviceState::Active) = (expected.renewed.get(name), d.state)
            && !d.certificates.iter().any(|c| c.issued_at >= *after)
        {
            violations.push(format!(
                "{name} holds no certificate issued since the order"
            ));
        }
    }
    violations.extend(crls(api, &devices));
    violations
}

/// Waits (blocking) until every invariant holds, for at most `within`; the violations left
/// (empty: none).
pub fn until_settled(api: &ApiClient, expected: &Expected, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let violations = settled(api, expected);
        if violations.is_empty() || Instant::now() >= deadline {
            return violations;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Each device once, each certificate once, live at most once as current and once as pending.
fn records(devices: &[DeviceView], expected: &Expected) -> Vec<String> {
    let mut violations = Vec::new();
    if devices.len() != expected.devices {
        violations.push(format!(
            "{} device records, {} expected",
            devices.len(),
            expected.devices
        ));
    }
    let mut ids = HashSet::new();
    let mut serials = HashSet::new();
    for d in devices {
        if !ids.insert(d.id.to_string()) {
            violations.push(format!("{} recorded twice", d.id));
        }
        let count =
            |f: fn(&CertStatus) -> bool| d.certificates.iter().filter(|c| f(&c.status)).count();
        let active = count(|s| matches!(s, CertStatus::Active));
        let issued = count(|s| matches!(s, CertStatus::Issued));
        if active > 1 || issued > 1 {
            violations.push(format!(
                "{} has {active} active and {issued} pending certificates",
                d.id
            ));
        }
        for c in &d.certificates {
            if !serials.insert(c.serial.to_lowercase()) {
                violations.push(format!("certificate {} recorded twice", c.serial));
            }
        }
    }
    violations
}

/// Every revoked certificate on the CRL its CA generation publishes.
fn crls(api: &ApiClient, devices: &[DeviceView]) -> Vec<String> {
    let mut listed: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    let mut violations = Vec::new();
    for d in devices {
        for c in &d.certificates {
            if !matches!(c.status, CertStatus::Revoked { .. }) {
                continue;
            }
            let Some(generation) = c.generation else {
                continue;
            };
            let on_crl = match listed.get(&generation) {
                Some(serials) => serials,
                None => {
                    let serials = match api.crl(generation).map(|der| revoked_serials(&der)) {
                        Ok(Ok(serials)) => serials,
                        Ok(Err(e)) | Err(e) => {
                            violations.push(format!("CRL of generation {generation}: {e}"));
                            BTreeSet::new()
                        }
                    };
                    listed.entry(generation).or_insert(serials)
                }
            };
            if !on_crl.contains(&normal_serial(&c.serial)) {
                violations.push(format!(
                    "{}'s revoked certificate {} is not on the CRL of generation {generation}",
                    d.serial, c.serial
                ));
            }
        }
    }
    violations
}

fn revoked_serials(der: &[u8]) -> Result<BTreeSet<String>, crate::operator::client::ClientError> {
    let (_, crl) = CertificateRevocationList::from_der(der)
        .map_err(|e| crate::operator::client::ClientError::Decode(e.to_string()))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| normal_serial(&certs::inspect::hex(r.raw_serial())))
        .collect())
}

/// A certificate serial as lowercase hex without leading zeros, however it was written.
fn normal_serial(hex: &str) -> String {
    let digits: String = hex
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    digits.trim_start_matches('0').to_string()
}

/// The violations on a device's disk (its agent state in `state_dir`, its A/B slots in
/// `slots_dir`): its state loads, and the image it boots (if it ever installed one) is the one
/// its manifest names, signed by one of `firmware_keys`, of a sequence at least `floor` (the
/// highest it committed before) and at least the anti-rollback floor it keeps.
pub fn device(
    state_dir: &Path,
    slots_dir: &Path,
    firmware_keys: &[protocol::keys::PublicKey],
    floor: u64,
) -> Vec<String> {
    use device_agent::platform::StateStore;
    let mut violations = Vec::new();
    let state = match device_agent::platform::files::FileStateStore::new(state_dir).load() {
        Ok(state) => state,
        Err(e) => return vec![format!("the agent state does not load: {e}")],
    };
    let slots = device_agent::platform::slots::FileSlots::new(slots_dir);
    match slots.booted() {
        Ok(None) => {}
        Ok(Some(booted)) => {
            let opened = firmware_keys
                .iter()
                .find_map(|k| protocol::manifest::Manifest::open(&booted.manifest, k).ok());
            match opened {
                None => violations.push("the booted image's manifest is not signed".into()),
                Some(m) => {
                    if let Err(e) = m.check_image(booted.size, &booted.digest) {
                        violations.push(format!("the booted image is not its manifest's: {e}"));
                    }
                    let kept = state.as_ref().map_or(0, |s| s.firmware_sequence);
                    if m.sequence < floor.max(kept) {
                        violations.push(format!(
                            "boots sequence {} below {} (committed before) / {kept} (kept)",
                            m.sequence, floor
                        ));
                    }
                }
            }
        }
        Err(e) => violations.push(format!("the slots cannot be read: {e}")),
    }
    violations
}

/// The violations of a decommissioned device's return to the factory state (agent state in
/// `state_dir`): no LDevID key, certificate, chain or network credential left, no attestation
/// still pending, no application data item; what survives is the firmware and its
/// anti-rollback floor.
pub fn wiped(state_dir: &Path) -> Vec<String> {
    use device_agent::platform::{StateStore, layout};
    let mut violations: Vec<String> = [
        layout::LDEVID_KEY,
        layout::PENDING_KEY,
        layout::LDEVID_CERT,
        layout::CHAIN,
        layout::NETWORK,
    ]
    .into_iter()
    .filter(|f| state_dir.join(f).exists())
    .map(|f| format!("{f} is still there"))
    .collect();
    match device_agent::platform::files::FileStateStore::new(state_dir).load() {
        Ok(None) => {}
        Ok(Some(state)) => {
            if state.ldevid.is_some() || state.network.is_some() {
                violations.push("the state keeps an LDevID or network credentials".into());
            }
            if state.pending_attestation.is_some() {
                violations.push("the attestation is still pending".into());
            }
        }
        Err(e) => violations.push(format!("the agent state does not load: {e}")),
    }
    let items = std::fs::read_dir(state_dir.join("data"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "enc"))
                .count()
        })
        .unwrap_or(0);
    if items > 0 {
        violations.push(format!("{items} application data items left"));
    }
    violations
}
