//! A platform held in memory: for simulators that run thousands of agents in one process,
//! where the file system would measure itself instead of the onboarder. Nothing survives the
//! process; the behaviour is the reference platform's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use certs::{KeyKind, KeyPair};
use protocol::attestation::{WipeMethod, WipedTarget};
use protocol::message::NetworkProfile;

use super::{DeviceKey, FirmwareSlots, KeyStore, NetworkApplier, Platform, StateStore, Wiper};
use crate::error::PlatformError;
use crate::machine::AgentState;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Keys {
    current: Option<Arc<KeyPair>>,
    pending: Option<Arc<KeyPair>>,
}

/// Keys in memory.
pub struct MemoryKeys {
    idevid: Arc<KeyPair>,
    kind: KeyKind,
    keys: Mutex<Keys>,
}

impl KeyStore for MemoryKeys {
    fn idevid_key(&self) -> Result<Arc<dyn DeviceKey>, PlatformError> {
        Ok(self.idevid.clone())
    }
    fn ldevid_key(&self) -> Result<Option<Arc<dyn DeviceKey>>, PlatformError> {
        Ok(lock(&self.keys)
            .current
            .clone()
            .map(|k| k as Arc<dyn DeviceKey>))
    }
    fn pending_ldevid_key(&self) -> Result<Option<Arc<dyn DeviceKey>>, PlatformError> {
        Ok(lock(&self.keys)
            .pending
            .clone()
            .map(|k| k as Arc<dyn DeviceKey>))
    }
    fn create_pending_ldevid_key(&self) -> Result<Arc<dyn DeviceKey>, PlatformError> {
        let key = Arc::new(KeyPair::generate(self.kind)?);
        lock(&self.keys).pending = Some(key.clone());
        Ok(key)
    }
    fn commit_pending_ldevid_key(&self) -> Result<(), PlatformError> {
        let mut keys = lock(&self.keys);
        keys.current = keys.pending.take();
        Ok(())
    }
    fn destroy_ldevid_keys(&self) -> Result<(), PlatformError> {
        *lock(&self.keys) = Keys::default();
        Ok(())
    }
}

/// State, network and application data in memory.
#[derive(Default)]
pub struct MemoryState {
    state: Mutex<Option<AgentState>>,
    network: Mutex<Option<NetworkProfile>>,
}

impl StateStore for MemoryState {
    fn load(&self) -> Result<Option<AgentState>, PlatformError> {
        Ok(lock(&self.state).clone())
    }
    fn save(&self, state: &AgentState) -> Result<(), PlatformError> {
        *lock(&self.state) = Some(state.clone());
        Ok(())
    }
    fn reset(&self, state: &AgentState) -> Result<(), PlatformError> {
        self.save(state)
    }
}

impl NetworkApplier for MemoryState {
    fn apply(
        &self,
        profile: &NetworkProfile,
        _client: &super::ClientCredential,
    ) -> Result<(), PlatformError> {
        *lock(&self.network) = Some(profile.clone());
        Ok(())
    }
}

impl Wiper for MemoryState {
    fn wipe(&self, _method: WipeMethod) -> Result<Vec<WipedTarget>, PlatformError> {
        let held = lock(&self.network).take().is_some();
        Ok(vec![WipedTarget {
            target: "network-credentials".into(),
            bytes: u64::from(held),
            method: WipeMethod::Clear,
            verification: "dropped from memory".into(),
            verified: true,
        }])
    }
}

#[derive(Default)]
struct Slots {
    staged: HashMap<Vec<u8>, Vec<u8>>,
    armed: Option<Vec<u8>>,
    active: Option<Vec<u8>>,
    previous: Option<Vec<u8>>,
    trial: bool,
}

/// A/B slots in memory (the image of the active slot is kept, the health check is the
/// reference self-test).
#[derive(Default)]
pub struct MemorySlots {
    slots: Mutex<Slots>,
}

impl FirmwareSlots for MemorySlots {
    fn staged_len(&self, digest: &[u8]) -> Result<u64, PlatformError> {
        Ok(lock(&self.slots)
            .staged
            .get(digest)
            .map_or(0, |s| s.len() as u64))
    }
    fn stage(&self, digest: &[u8], offset: u64, bytes: &[u8]) -> Result<(), PlatformError> {
        let mut slots = lock(&self.slots);
        let image = slots.staged.entry(digest.to_vec()).or_default();
        let end = offset as usize + bytes.len();
        if image.len() < end {
            image.resize(end, 0);
        }
        image[offset as usize..end].copy_from_slice(bytes);
        Ok(())
    }
    fn staged_digest(&self, digest: &[u8]) -> Result<(u64, [u8; 32]), PlatformError> {
        let slots = lock(&self.slots);
        let image = slots
            .staged
            .get(digest)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Ok((image.len() as u64, protocol::manifest::sha256(image)))
    }
    fn discard(&self, digest: &[u8]) -> Result<(), PlatformError> {
        lock(&self.slots).staged.remove(digest);
        Ok(())
    }
    fn install(&self, digest: &[u8], _manifest: &[u8]) -> Result<(), PlatformError> {
        let mut slots = lock(&self.slots);
        slots.armed = slots.staged.remove(digest);
        Ok(())
    }
    fn boot_trial(&self) -> Result<(), PlatformError> {
        let mut slots = lock(&self.slots);
        let armed = slots
            .armed
            .take()
            .ok_or_else(|| PlatformError::Firmware("no image is armed".into()))?;
        slots.previous = slots.active.replace(armed);
        slots.trial = true;
        Ok(())
    }
    fn self_test(&self) -> Result<(), String> {
        let slots = lock(&self.slots);
        let marker = super::slots::SELFTEST_FAIL;
        match &slots.active {
            Some(image) if image.windows(marker.len()).any(|w| w == marker) => {
                Err("the image's self-test failed".into())
            }
            _ => Ok(()),
        }
    }
    fn commit(&self) -> Result<(), PlatformError> {
        let mut slots = lock(&self.slots);
        slots.trial = false;
        slots.previous = None;
        Ok(())
    }
    fn rollback(&self) -> Result<(), PlatformError> {
        let mut slots = lock(&self.slots);
        slots.active = slots.previous.take();
        slots.trial = false;
        Ok(())
    }
    fn in_trial(&self) -> Result<bool, PlatformError> {
        Ok(lock(&self.slots).trial)
    }
}

impl Platform {
    /// A platform in memory for a device whose IDevID key is `idevid`.
    pub fn memory(idevid: KeyPair) -> Platform {
        let kind = idevid.kind();
        let state = Arc::new(MemoryState::default());
        Platform {
            keys: Arc::new(MemoryKeys {
                idevid: Arc::new(idevid),
                kind,
                keys: Mutex::new(Keys::default()),
            }),
            state: state.clone(),
            network: state.clone(),
            slots: Arc::new(MemorySlots::default()),
            wiper: state,
        }
    }
}
