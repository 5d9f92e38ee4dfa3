//! Secrets at rest: a device's network credentials (its Wi-Fi passphrase) are encrypted before
//! any store sees them, under a key kept apart from the store (`DIR/store.key`, 0600), so a
//! copied store, a backup or a shared database reveals none of them.
//!
//! AES-256-GCM with a random 96-bit nonce per encryption; the device id is the associated data,
//! so a sealed credential cannot be moved to another device's record. Every store backend
//! encodes records through [`RecordCodec`], so none of them handles a secret in the clear.

use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_bytes::ByteBuf;

use super::StoreError;
use crate::core::{DeviceId, DeviceRecord};
use protocol::message::NetworkProfile;

/// Length of the key file's key.
const KEY_LEN: usize = 32;
/// Largest stored record decoded (a device record with a long certificate history).
pub const MAX_RECORD: usize = 4 * 1024 * 1024;

/// The key that seals secrets in stored records.
pub struct SealingKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

impl SealingKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<SealingKey, StoreError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| StoreError::Io("the store key must be 32 bytes".into()))?;
        Ok(SealingKey {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// Reads the key file at `path` (hex), creating it (0600) with a fresh key if it does not
    /// exist.
    pub fn load_or_create(path: &Path) -> Result<SealingKey, StoreError> {
        let bytes = certs::files::secret(path, KEY_LEN)
            .map_err(|e| StoreError::Io(format!("store key {}: {e}", path.display())))?;
        SealingKey::from_bytes(&bytes)
    }

    fn seal(&self, id: &DeviceId, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| StoreError::Io("no randomness to seal a secret".into()))?;
        let mut out = plaintext.to_vec();
        let aad = id.to_string();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut out,
            )
            .map_err(|_| StoreError::Io("sealing a secret failed".into()))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        Ok(sealed)
    }

    fn open(&self, id: &DeviceId, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let corrupt = || StoreError::Corrupt {
            key: id.to_string(),
            detail: "its sealed network credentials do not open with this store key".into(),
        };
        if sealed.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt())?;
        let aad = id.to_string();
        let mut buf = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| corrupt())?;
        Ok(plain.to_vec())
    }
}

/// How device records are stored: the record without its network credentials, and the
/// credentials sealed, as a CBOR pair.
#[derive(Debug)]
pub struct RecordCodec {
    key: SealingKey,
}

impl RecordCodec {
    /// A codec sealing with `key`.
    pub fn new(key: SealingKey) -> Self {
        RecordCodec { key }
    }

    /// The stored form of `record`.
    pub fn encode(&self, record: &DeviceRecord) -> Result<Vec<u8>, StoreError> {
        let sealed = match &record.network {
            Some(network) => Some(ByteBuf::from(
                self.key
                    .seal(&record.id, &protocol::cbor::to_vec(network))?,
            )),
            None => None,
        };
        let open = DeviceRecord {
            network: None,
            ..record.clone()
        };
        Ok(protocol::cbor::to_vec(&(open, sealed)))
    }

    /// A record from its stored form; `key` names it in errors.
    pub fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<DeviceRecord, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            detail,
        };
        let (mut record, sealed): (DeviceRecord, Option<ByteBuf>) =
            protocol::cbor::from_slice(bytes, MAX_RECORD).map_err(|e| corrupt(e.to_string()))?;
        if let Some(sealed) = sealed {
            let plain = self.key.open(&record.id, &sealed)?;
            let network: NetworkProfile = protocol::cbor::from_slice(&plain, MAX_RECORD)
                .map_err(|e| corrupt(e.to_string()))?;
            record.network = Some(network);
        }
        Ok(record)
    }

    /// The version of a stored record, without opening its secrets.
    pub fn version(&self, key: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
        let (record, _): (DeviceRecord, serde::de::IgnoredAny) =
            protocol::cbor::from_slice(bytes, MAX_RECORD).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                detail: e.to_string(),
            })?;
        Ok(record.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::MakerId;

    fn record(serial: &str) -> DeviceRecord {
        let id = DeviceId::new(MakerId::of_spki(b"m"), serial).unwrap();
        let mut r = DeviceRecord::expected(id, vec![1], None, 1);
        r.network = Some(NetworkProfile::Wifi {
            ssid: "iot".into(),
            psk: "0123456789abcdef0123456789abcdef".into(),
        });
        r
    }

    #[test]
    fn secrets_are_sealed_to_their_device() {
        let codec = RecordCodec::new(SealingKey::from_bytes(&[7; 32]).unwrap());
        let r = record("SN-1");
        let stored = codec.encode(&r).unwrap();
        assert!(
            !stored
                .windows(32)
                .any(|w| w == b"0123456789abcdef0123456789abcdef"),
            "the passphrase is in the clear"
        );
        assert_eq!(codec.decode(b"k", &stored).unwrap(), r);
        assert_eq!(codec.version(b"k", &stored).unwrap(), r.version);
        // Another key cannot open it.
        let other = RecordCodec::new(SealingKey::from_bytes(&[8; 32]).unwrap());
        assert!(matches!(
            other.decode(b"k", &stored),
            Err(StoreError::Corrupt { .. })
        ));
        // Nor can the same key under another device's name.
        let (mut moved, sealed): (DeviceRecord, Option<ByteBuf>) =
            protocol::cbor::from_slice(&stored, MAX_RECORD).unwrap();
        moved.id = record("SN-2").id;
        let swapped = protocol::cbor::to_vec(&(moved, sealed));
        assert!(codec.decode(b"k", &swapped).is_err());
    }
}
