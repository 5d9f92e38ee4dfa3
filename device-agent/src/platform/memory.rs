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

/// An image as the memory slots keep it: its length and running SHA-256, and whether the
/// reference self-test's failure marker went by, never its bytes. A simulator of 100,000
/// devices then holds a few hundred bytes per image instead of a copy of it, and the agent
/// still hashes every byte it downloads.
#[derive(Clone)]
struct Image {
    len: u64,
    hash: ring::digest::Context,
    /// The last bytes seen (up to the marker's length less one), so that a marker split
    /// between two pieces is found.
    tail: Vec<u8>,
    fails_self_test: bool,
}

impl Image {
    fn new() -> Self {
        Image {
            len: 0,
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            tail: Vec::new(),
            fails_self_test: false,
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
        self.len += bytes.len() as u64;
        let marker = super::slots::SELFTEST_FAIL;
        let keep = marker.len() - 1;
        let contains = |b: &[u8]| b.windows(marker.len()).any(|w| w == marker);
        // Where the last piece meets this one: the old tail and this piece's first bytes.
        let mut boundary = std::mem::take(&mut self.tail);
        boundary.extend_from_slice(&bytes[..bytes.len().min(keep)]);
        self.fails_self_test |= contains(&boundary) || contains(bytes);
        self.tail = if bytes.len() >= keep {
            bytes[bytes.len() - keep..].to_vec()
        } else {
            // The whole piece is in `boundary`, which then ends the stream.
            boundary.split_off(boundary.len().saturating_sub(keep))
        };
    }

    fn digest(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.hash.clone().finish().as_ref());
        out
    }
}

#[derive(Default)]
struct Slots {
    staged: HashMap<Vec<u8>, Image>,
    armed: Option<Image>,
    active: Option<Image>,
    previous: Option<Image>,
    trial: bool,
}

/// A/B slots in memory: images are staged in order (as the agent downloads them) and kept as
/// [`Image`]s; the health check is the reference self-test.
#[derive(Default)]
pub struct MemorySlots {
    slots: Mutex<Slots>,
}

impl FirmwareSlots for MemorySlots {
    fn staged_len(&self, digest: &[u8]) -> Result<u64, PlatformError> {
        Ok(lock(&self.slots).staged.get(digest).map_or(0, |s| s.len))
    }
    fn stage(&self, digest: &[u8], offset: u64, bytes: &[u8]) -> Result<(), PlatformError> {
        let mut slots = lock(&self.slots);
        let image = slots
            .staged
            .entry(digest.to_vec())
            .or_insert_with(Image::new);
        if offset != image.len {
            return Err(PlatformError::Firmware(format!(
                "a piece at byte {offset} of an image staged up to byte {}: memory slots \
                 stage in order",
                image.len
            )));
        }
        image.append(bytes);
        Ok(())
    }
    fn staged_digest(&self, digest: &[u8]) -> Result<(u64, [u8; 32]), PlatformError> {
        let slots = lock(&self.slots);
        Ok(match slots.staged.get(digest) {
            Some(image) => (image.len, image.digest()),
            None => (0, protocol::manifest::sha256(&[])),
        })
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
        match &lock(&self.slots).active {
            Some(image) if image.fails_self_test => Err("the image's self-test failed".into()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(pieces: &[&[u8]]) -> MemorySlots {
        let slots = MemorySlots::default();
        let mut offset = 0;
        for piece in pieces {
            slots.stage(b"d", offset, piece).unwrap();
            offset += piece.len() as u64;
        }
        slots
    }

    fn boots(slots: &MemorySlots) -> Result<(), String> {
        slots.install(b"d", b"").unwrap();
        slots.boot_trial().unwrap();
        slots.self_test()
    }

    #[test]
    fn the_digest_is_of_every_byte_staged() {
        let image: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let slots = staged(&[&image[..1], &image[1..40_000], &image[40_000..]]);
        assert_eq!(slots.staged_len(b"d").unwrap(), image.len() as u64);
        let (len, digest) = slots.staged_digest(b"d").unwrap();
        assert_eq!(len, image.len() as u64);
        assert_eq!(digest, protocol::manifest::sha256(&image));
        assert_eq!(
            slots.staged_digest(b"none").unwrap(),
            (0, protocol::manifest::sha256(&[]))
        );
    }

    #[test]
    fn a_marker_is_found_wherever_the_pieces_split_it() {
        let marker = super::super::slots::SELFTEST_FAIL;
        let mut image = b"abc".to_vec();
        image.extend_from_slice(marker);
        image.extend_from_slice(b"xyz");
        for a in 0..image.len() {
            for b in a..image.len() {
                let slots = staged(&[&image[..a], &image[a..b], &image[b..]]);
                assert!(boots(&slots).is_err(), "split at {a} and {b}");
            }
        }
        let mut clean = image.clone();
        clean[5] = b'_';
        assert!(boots(&staged(&[&clean[..4], &clean[4..9], &clean[9..]])).is_ok());
    }

    #[test]
    fn pieces_out_of_order_are_refused() {
        let slots = staged(&[b"hello "]);
        assert!(matches!(
            slots.stage(b"d", 2, b"x"),
            Err(PlatformError::Firmware(_))
        ));
        assert!(slots.stage(b"d", 7, b"x").is_err());
        slots.stage(b"d", 6, b"world").unwrap();
        let (len, digest) = slots.staged_digest(b"d").unwrap();
        assert_eq!(
            (len, digest),
            (11, protocol::manifest::sha256(b"hello world"))
        );
    }
}
