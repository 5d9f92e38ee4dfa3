//! Reference platform on a Linux file system.
//!
//! ```text
//! IDENTITY/idevid.key          IDevID key (from the factory; read only)
//! STATE/state.cbor             agent state, written atomically (0600), its network credentials
//!                              sealed under the data key of [`super::wiper::Vault`] (destroying
//!                              that key at a decommissioning erases every old copy too)
//! STATE/ldevid.key             current LDevID key (0600)
//! STATE/ldevid-pending.key     LDevID key waiting for its certificate (0600)
//! STATE/ldevid.pem, chain.pem  copies of the LDevID and its CA chain, for tools like openssl
//! STATE/network.json           applied network credentials (0600)
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use certs::{KeyKind, KeyPair, files};
use protocol::message::NetworkProfile;

use super::layout;
use super::{ClientCredential, DeviceKey, KeyLocation, KeyStore, NetworkApplier, StateStore};
use crate::error::PlatformError;
use crate::machine::AgentState;

/// Largest state file read.
const MAX_STATE: u64 = 1024 * 1024;

/// Keys in PEM files: the IDevID in the identity directory, LDevIDs in the state directory.
#[derive(Debug)]
pub struct FileKeyStore {
    identity_dir: PathBuf,
    state_dir: PathBuf,
    kind: KeyKind,
    idevid: Mutex<Option<Arc<KeyPair>>>,
}

impl FileKeyStore {
    /// A key store over the two directories; new LDevID keys are of `kind`.
    pub fn new(identity_dir: &Path, state_dir: &Path, kind: KeyKind) -> Self {
        FileKeyStore {
            identity_dir: identity_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            kind,
            idevid: Mutex::new(None),
        }
    }

    fn read_optional(&self, name: &str) -> Result<Option<Arc<dyn DeviceKey>>, PlatformError> {
        let path = self.state_dir.join(name);
        if !path.exists() {
            return Ok(None);
        }
        if super::shred::left_zeroed(&path)? {
            // Its destruction was cut short between the overwrite and the removal: the key is
            // gone; finish the removal.
            super::shred::overwrite_and_remove(&path)?;
            return Ok(None);
        }
        Ok(Some(Arc::new(files::read_key(&path)?)))
    }
}

impl KeyStore for FileKeyStore {
    fn idevid_key(&self) -> Result<Arc<dyn DeviceKey>, PlatformError> {
        let mut cached = self.idevid.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = cached.as_ref() {
            return Ok(key.clone());
        }
        let key = Arc::new(files::read_key(
            &self.identity_dir.join(certs::identity::layout::IDEVID_KEY),
        )?);
        *cached = Some(key.clone());
        Ok(key)
    }

    fn ldevid_key(&self) -> Result<Option<Arc<dyn DeviceKey>>, PlatformError> {
        self.read_optional(layout::LDEVID_KEY)
    }

    fn pending_ldevid_key(&self) -> Result<Option<Arc<dyn DeviceKey>>, PlatformError> {
        self.read_optional(layout::PENDING_KEY)
    }

    fn create_pending_ldevid_key(&self) -> Result<Arc<dyn DeviceKey>, PlatformError> {
        let key = KeyPair::generate(self.kind)?;
        files::write_secret(
            &self.state_dir.join(layout::PENDING_KEY),
            key.to_pem().as_bytes(),
        )?;
        Ok(Arc::new(key))
    }

    fn destroy_ldevid_keys(&self) -> Result<(), PlatformError> {
        for name in [layout::LDEVID_KEY, layout::PENDING_KEY] {
            let (_, clean) = super::shred::overwrite_and_remove(&self.state_dir.join(name))?;
            if !clean {
                return Err(PlatformError::Key(format!(
                    "{name} survived its destruction"
                )));
            }
        }
        Ok(())
    }

    fn ldevid_key_location(&self) -> KeyLocation {
        KeyLocation::File {
            path: self.state_dir.join(layout::LDEVID_KEY),
        }
    }

    fn commit_pending_ldevid_key(&self) -> Result<(), PlatformError> {
        let pending = self.state_dir.join(layout::PENDING_KEY);
        let current = self.state_dir.join(layout::LDEVID_KEY);
        let io = |e: std::io::Error| PlatformError::Key(format!("promoting the pending key: {e}"));
        std::fs::rename(&pending, &current).map_err(io)?;
        std::fs::File::open(&self.state_dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }
}

/// What `state.cbor` holds: the state without its network credentials, and those sealed.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    state: AgentState,
    #[serde(default, with = "serde_bytes")]
    network: Option<Vec<u8>>,
}

/// The name the network credentials are sealed under.
const SEALED_NETWORK: &str = "network";

/// State in one CBOR file, replaced atomically.
#[derive(Debug)]
pub struct FileStateStore {
    dir: PathBuf,
    vault: super::wiper::Vault,
    /// The LDevID last copied to `ldevid.pem`, so the copies are only rewritten on change.
    exported: Mutex<Option<Vec<u8>>>,
}

impl FileStateStore {
    /// A state store in `dir`.
    pub fn new(dir: &Path) -> Self {
        FileStateStore {
            dir: dir.to_path_buf(),
            vault: super::wiper::Vault::new(dir),
            exported: Mutex::new(None),
        }
    }
}

impl FileStateStore {
    /// A reset a crash interrupted: the old state under its second name is shredded, unless
    /// it is still the state in force (the crash came before the new one replaced it), when
    /// only the second name goes.
    fn finish_shredding(&self) -> Result<(), PlatformError> {
        let old = self.dir.join(layout::STATE_SHREDDING);
        let Ok(shredding) = std::fs::metadata(&old) else {
            return Ok(());
        };
        let in_force = std::fs::metadata(self.dir.join(layout::STATE))
            .is_ok_and(|current| same_file(&current, &shredding));
        if in_force {
            std::fs::remove_file(&old).map_err(|e| certs::CertError::Io {
                path: old,
                source: e,
            })?;
        } else {
            super::shred::overwrite_and_remove(&old)?;
        }
        Ok(())
    }
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Without inode numbers, the second name is taken for the state in force: never shredded.
#[cfg(not(unix))]
fn same_file(_a: &std::fs::Metadata, _b: &std::fs::Metadata) -> bool {
    true
}

impl StateStore for FileStateStore {
    /// Shreds the old state and leaves a readable one whenever a crash comes: the old state
    /// gets a second name, the new one replaces it atomically, then the old is overwritten
    /// and removed ([`FileStateStore::finish_shredding`] at the next start if a crash came
    /// first).
    fn reset(&self, state: &AgentState) -> Result<(), PlatformError> {
        self.finish_shredding()?;
        let (current, old) = (
            self.dir.join(layout::STATE),
            self.dir.join(layout::STATE_SHREDDING),
        );
        match std::fs::hard_link(&current, &old) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(certs::CertError::Io {
                    path: old,
                    source: e,
                }
                .into());
            }
            _ => {}
        }
        *self.exported.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.save(state)?;
        super::shred::overwrite_and_remove(&old)?;
        Ok(())
    }

    fn load(&self) -> Result<Option<AgentState>, PlatformError> {
        self.finish_shredding()?;
        let path = self.dir.join(layout::STATE);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = files::read_limited(&path, MAX_STATE)?;
        let corrupt =
            |e: protocol::DecodeError| PlatformError::Corrupt(format!("{}: {e}", path.display()));
        let stored = match protocol::cbor::from_slice::<Stored>(&bytes, MAX_STATE as usize) {
            Ok(stored) => stored,
            // Written before the credentials were sealed: the state alone.
            Err(_) => Stored {
                state: protocol::cbor::from_slice(&bytes, MAX_STATE as usize).map_err(corrupt)?,
                network: None,
            },
        };
        let mut state = stored.state;
        if let Some(sealed) = stored.network {
            // `None` when the data key was destroyed: the credentials were erased with it.
            state.network = match self.vault.open(SEALED_NETWORK, &sealed)? {
                Some(plain) => {
                    Some(protocol::cbor::from_slice(&plain, MAX_STATE as usize).map_err(corrupt)?)
                }
                None => None,
            };
        }
        Ok(Some(state))
    }

    fn save(&self, state: &AgentState) -> Result<(), PlatformError> {
        let mut stored = Stored {
            state: state.clone(),
            network: None,
        };
        if let Some(network) = stored.state.network.take() {
            stored.network = Some(
                self.vault
                    .seal(SEALED_NETWORK, &protocol::cbor::to_vec(&network))?,
            );
        }
        files::write_secret(
            &self.dir.join(layout::STATE),
            &protocol::cbor::to_vec(&stored),
        )?;
        // Copies for people and tools while the device holds an LDevID in use (not once it
        // is wiped and attesting, not after); the state file above is the truth.
        let mut exported = self.exported.lock().unwrap_or_else(|e| e.into_inner());
        match state
            .ldevid
            .as_ref()
            .filter(|_| state.pending_attestation.is_none())
        {
            Some(cert) if exported.as_ref() != Some(cert) => {
                files::write_public(
                    &self.dir.join(layout::LDEVID_CERT),
                    files::cert_pem(cert).as_bytes(),
                )?;
                files::write_public(
                    &self.dir.join(layout::CHAIN),
                    files::certs_pem(state.chain.iter().map(|c| c.as_slice())).as_bytes(),
                )?;
                *exported = Some(cert.clone());
            }
            Some(_) => {}
            None => {
                for copy in [layout::LDEVID_CERT, layout::CHAIN] {
                    match std::fs::remove_file(self.dir.join(copy)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(certs::CertError::Io {
                                path: self.dir.join(copy),
                                source: e,
                            }
                            .into());
                        }
                        _ => {}
                    }
                }
                *exported = None;
            }
        }
        Ok(())
    }
}

/// Writes the network credentials to a JSON file (0600), where a supplicant configuration
/// generator would pick them up.
#[derive(Debug, Clone)]
pub struct FileNetwork {
    dir: PathBuf,
}

impl FileNetwork {
    /// Network credentials go to `dir/network.json`.
    pub fn new(dir: &Path) -> Self {
        FileNetwork {
            dir: dir.to_path_buf(),
        }
    }
}

impl NetworkApplier for FileNetwork {
    fn apply(
        &self,
        profile: &NetworkProfile,
        client: &ClientCredential,
    ) -> Result<(), PlatformError> {
        let json = match profile {
            NetworkProfile::Wifi { ssid, psk } => {
                serde_json::json!({"kind": "wifi", "ssid": ssid, "psk": psk})
            }
            NetworkProfile::EapTls {
                ssid,
                identity,
                ca_chain,
            } => serde_json::json!({
                "kind": "eap-tls",
                "ssid": ssid,
                "identity": identity,
                "client_cert": files::cert_pem(&client.certificate),
                "client_chain": files::certs_pem(client.chain.iter().map(Vec::as_slice)),
                "client_key": client.key,
                "ca_cert": files::certs_pem(ca_chain.iter().map(|c| c.as_slice())),
            }),
            _ => serde_json::json!({"kind": "unknown"}),
        };
        files::write_secret(&self.dir.join(layout::NETWORK), json.to_string().as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Phase;

    #[test]
    fn a_reset_interrupted_at_any_step_leaves_a_readable_state_and_shreds_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStateStore::new(dir.path());
        let mut owned = AgentState::factory("1.0.0");
        owned.firmware_sequence = 7;
        owned.pending_attestation = Some(vec![1, 2, 3]);
        let current = dir.path().join(layout::STATE);
        let shredding = dir.path().join(layout::STATE_SHREDDING);
        // Killed after the second name, before the new state: the state in force is kept.
        store.save(&owned).unwrap();
        std::fs::hard_link(&current, &shredding).unwrap();
        assert_eq!(store.load().unwrap(), Some(owned.clone()));
        assert!(!shredding.exists());
        // Killed after the new state replaced it, before the old was shredded.
        std::fs::hard_link(&current, &shredding).unwrap();
        let factory = crate::machine::decommission::factory_after(&owned);
        let fresh = FileStateStore::new(dir.path());
        fresh.save(&factory).unwrap();
        assert_eq!(fresh.load().unwrap(), Some(factory.clone()));
        assert!(!shredding.exists());
        // Whole.
        store.save(&owned).unwrap();
        store.reset(&factory).unwrap();
        assert_eq!(store.load().unwrap(), Some(factory));
        assert!(!shredding.exists());
    }

    #[test]
    fn pending_keys_become_current_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let keys = FileKeyStore::new(dir.path(), dir.path(), KeyKind::P256);
        assert!(keys.ldevid_key().unwrap().is_none());
        let pending = keys.create_pending_ldevid_key().unwrap();
        assert!(keys.ldevid_key().unwrap().is_none());
        assert_eq!(
            keys.pending_ldevid_key().unwrap().unwrap().public_key(),
            pending.public_key()
        );
        keys.commit_pending_ldevid_key().unwrap();
        assert_eq!(
            keys.ldevid_key().unwrap().unwrap().public_key(),
            pending.public_key()
        );
        assert!(keys.pending_ldevid_key().unwrap().is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(layout::LDEVID_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn state_round_trips_and_corruption_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStateStore::new(dir.path());
        assert!(store.load().unwrap().is_none());
        let mut state = AgentState::factory("1.0.0");
        state.phase = Phase::Enrolled { confirmed: false };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), Some(state));
        std::fs::write(dir.path().join(layout::STATE), b"\xff\x00junk").unwrap();
        assert!(matches!(store.load(), Err(PlatformError::Corrupt(_))));
    }

    /// A factory state holding a Wi-Fi passphrase (sealed when stored).
    fn with_wifi() -> AgentState {
        let mut state = AgentState::factory("1.0.0");
        state.network = Some(NetworkProfile::Wifi {
            ssid: "plant-7".into(),
            psk: "correct-horse-battery-staple".into(),
        });
        state
    }

    /// A destruction killed between the overwrite and the removal leaves files of zeros: the
    /// key store and the data key read them as destroyed (and finish removing them) instead of
    /// refusing to start on a malformed key.
    #[test]
    fn keys_left_zeroed_by_an_interrupted_destruction_read_as_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let keys = FileKeyStore::new(dir.path(), dir.path(), certs::KeyKind::P256);
        keys.create_pending_ldevid_key().unwrap();
        keys.commit_pending_ldevid_key().unwrap();
        let path = dir.path().join(layout::LDEVID_KEY);
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        std::fs::write(&path, vec![0u8; len]).unwrap();
        assert!(keys.ldevid_key().unwrap().is_none());
        assert!(!path.exists());

        let store = FileStateStore::new(dir.path());
        let state = with_wifi();
        store.save(&state).unwrap();
        std::fs::write(dir.path().join("data/dek.key"), [0u8; 32]).unwrap();
        assert_eq!(store.load().unwrap().unwrap().network, None);
        assert!(!dir.path().join("data/dek.key").exists());
        // A key that is not zeros but broken is still refused, not taken as destroyed.
        std::fs::write(&path, b"-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
        assert!(keys.ldevid_key().is_err());
    }

    /// The Wi-Fi passphrase is never in the state file in clear; it is gone once the data key
    /// is destroyed (a decommissioning), a changed byte is refused, and a state written before
    /// sealing still loads.
    #[test]
    fn network_credentials_are_sealed_in_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStateStore::new(dir.path());
        let state = with_wifi();
        store.save(&state).unwrap();
        let raw = std::fs::read(dir.path().join(layout::STATE)).unwrap();
        assert!(!raw.windows(13).any(|w| w == b"correct-horse"));
        assert_eq!(store.load().unwrap(), Some(state.clone()));

        let mut tampered = raw.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        std::fs::write(dir.path().join(layout::STATE), &tampered).unwrap();
        assert!(matches!(store.load(), Err(PlatformError::Corrupt(_))));

        std::fs::write(dir.path().join(layout::STATE), &raw).unwrap();
        std::fs::remove_file(dir.path().join("data/dek.key")).unwrap();
        let erased = store.load().unwrap().unwrap();
        assert_eq!(erased.network, None);
        assert_eq!(erased.phase, state.phase);

        std::fs::write(
            dir.path().join(layout::STATE),
            protocol::cbor::to_vec(&state),
        )
        .unwrap();
        assert_eq!(store.load().unwrap(), Some(state));
    }
}
