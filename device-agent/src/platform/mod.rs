//! What the agent needs from the device it runs on, as traits: keys ([`KeyStore`], whose keys
//! are [`DeviceKey`] handles so a secure element or TPM can hold them), persistent state
//! ([`StateStore`]) and the network configuration ([`NetworkApplier`]). [`files`] has the
//! reference implementations on a Linux file system ([`layout`] names its files, [`shred`]
//! overwrites them before removal).

pub mod files;
pub mod hooks;
pub mod key;
pub mod layout;
pub mod memory;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
pub mod shred;
pub mod slots;
pub mod wiper;

use std::sync::Arc;

use protocol::message::NetworkProfile;

pub use key::DeviceKey;

/// Everything the agent needs from the device, in one place.
#[derive(Clone)]
pub struct Platform {
    /// Private keys.
    pub keys: Arc<dyn KeyStore>,
    /// Persistent state.
    pub state: Arc<dyn StateStore>,
    /// Network configuration.
    pub network: Arc<dyn NetworkApplier>,
    /// Firmware slots.
    pub slots: Arc<dyn FirmwareSlots>,
    /// Sanitization.
    pub wiper: Arc<dyn Wiper>,
}

impl Platform {
    /// The reference platform on a file system: the factory identity in `identity_dir`, the
    /// agent's own files in `state_dir`; new LDevID keys of `kind`.
    pub fn files(
        identity_dir: &std::path::Path,
        state_dir: &std::path::Path,
        kind: certs::KeyKind,
    ) -> Platform {
        Platform {
            keys: Arc::new(files::FileKeyStore::new(identity_dir, state_dir, kind)),
            state: Arc::new(files::FileStateStore::new(state_dir)),
            network: Arc::new(files::FileNetwork::new(state_dir)),
            slots: Arc::new(slots::FileSlots::new(&state_dir.join("firmware"))),
            wiper: Arc::new(wiper::FileWiper::new(state_dir)),
        }
    }
}

use crate::error::PlatformError;
use crate::machine::AgentState;

/// The device's private keys.
///
/// An LDevID key is created *pending*, used for a CSR, and only made *current* once the
/// certificate for it is stored; until then the old key keeps working, so a crash at any point
/// leaves the device with one usable credential.
pub trait KeyStore: Send + Sync {
    /// The IDevID key (permanent, from the factory).
    fn idevid_key(&self) -> Result<Arc<dyn DeviceKey>, PlatformError>;
    /// The current LDevID key, if any.
    fn ldevid_key(&self) -> Result<Option<Arc<dyn DeviceKey>>, PlatformError>;
    /// The pending LDevID key, if any.
    fn pending_ldevid_key(&self) -> Result<Option<Arc<dyn DeviceKey>>, PlatformError>;
    /// Creates a fresh pending LDevID key (replacing an older pending one) and stores it
    /// before returning.
    fn create_pending_ldevid_key(&self) -> Result<Arc<dyn DeviceKey>, PlatformError>;
    /// Makes the pending key current, atomically; the old current key is destroyed.
    fn commit_pending_ldevid_key(&self) -> Result<(), PlatformError>;
    /// Destroys every LDevID key (current and pending); the IDevID key stays.
    fn destroy_ldevid_keys(&self) -> Result<(), PlatformError>;
    /// Where another program of the device (the Wi-Fi supplicant, for EAP-TLS) finds the
    /// current LDevID key, which never leaves the store.
    fn ldevid_key_location(&self) -> KeyLocation {
        KeyLocation::Private
    }
}

/// Where the current LDevID private key is, for the network stack's EAP-TLS.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum KeyLocation {
    /// A PEM file readable by the device's network stack.
    File {
        /// Its path.
        path: std::path::PathBuf,
    },
    /// An object in a PKCS#11 token, as an RFC 7512 URI (wpa_supplicant takes it through its
    /// OpenSSL engine or provider).
    Pkcs11 {
        /// `pkcs11:token=...;object=ldevid;type=private`.
        uri: String,
    },
    /// Held where no other program reaches it (an embedded store): EAP-TLS needs the
    /// platform's own network integration.
    Private,
}

/// The device's operational credential as its network stack needs it for EAP-TLS: redone at
/// every new LDevID (onboarding, renewal), as the old certificate is revoked soon after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCredential {
    /// The LDevID (DER).
    pub certificate: Vec<u8>,
    /// Its CA chain, issuing CA first (DER).
    pub chain: Vec<Vec<u8>>,
    /// Where its key is.
    pub key: KeyLocation,
}

/// The agent's persistent state, saved atomically as a whole.
pub trait StateStore: Send + Sync {
    /// The saved state, or `None` on a factory-fresh device.
    fn load(&self) -> Result<Option<AgentState>, PlatformError>;
    /// Saves the state; after a crash either the old or the new state is found.
    fn save(&self, state: &AgentState) -> Result<(), PlatformError>;
    /// Destroys the stored state (overwriting it where the medium allows) and starts again
    /// from `state`: after a decommissioning.
    fn reset(&self, state: &AgentState) -> Result<(), PlatformError>;
}

/// Where firmware images are downloaded, installed and booted: two slots, so the running
/// image stays intact until the new one proved healthy.
pub trait FirmwareSlots: Send + Sync {
    /// Bytes of image `digest` staged so far (a download resumes from here).
    fn staged_len(&self, digest: &[u8]) -> Result<u64, PlatformError>;
    /// Writes `bytes` at `offset` of the staged image.
    fn stage(&self, digest: &[u8], offset: u64, bytes: &[u8]) -> Result<(), PlatformError>;
    /// Size and SHA-256 of the staged image, as stored.
    fn staged_digest(&self, digest: &[u8]) -> Result<(u64, [u8; 32]), PlatformError>;
    /// Forgets a staged image.
    fn discard(&self, digest: &[u8]) -> Result<(), PlatformError>;
    /// Moves the staged image and its manifest into the inactive slot and arms it.
    fn install(&self, digest: &[u8], manifest: &[u8]) -> Result<(), PlatformError>;
    /// Boots the armed slot on trial.
    fn boot_trial(&self) -> Result<(), PlatformError>;
    /// The running image's health check.
    fn self_test(&self) -> Result<(), String>;
    /// Keeps the trial slot for good.
    fn commit(&self) -> Result<(), PlatformError>;
    /// Returns to the slot that ran before the trial.
    fn rollback(&self) -> Result<(), PlatformError>;
    /// Whether a trial boot is under way (after a crash in it, the agent rolls back).
    fn in_trial(&self) -> Result<bool, PlatformError>;
}

/// Sanitizes what the device holds for its owner (NIST SP 800-88).
pub trait Wiper: Send + Sync {
    /// Erases the owner's data and the network credentials with `method`, verifies, and says
    /// what was wiped. Runs while the LDevID key still exists: the agent destroys that key
    /// itself, last, after the attestation it signs with it has been delivered.
    fn wipe(
        &self,
        method: protocol::attestation::WipeMethod,
    ) -> Result<Vec<protocol::attestation::WipedTarget>, PlatformError>;

    /// The owner's application data in the clear, by name, for handing it back before the
    /// wipe (the agent encrypts it to the owner). A platform that keeps none has none to give.
    fn export(&self) -> Result<Vec<(String, Vec<u8>)>, PlatformError> {
        Ok(Vec::new())
    }
}

/// Applies network credentials to the device's network stack.
pub trait NetworkApplier: Send + Sync {
    /// Configures the network with `profile`; an EAP-TLS profile authenticates with `client`.
    fn apply(
        &self,
        profile: &NetworkProfile,
        client: &ClientCredential,
    ) -> Result<(), PlatformError>;
}
