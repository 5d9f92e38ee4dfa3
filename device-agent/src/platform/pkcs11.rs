//! Keys in a PKCS#11 token (a secure element, an HSM, SoftHSM2, or a TPM 2.0 through
//! tpm2-pkcs11): generated inside it as sensitive, non-extractable objects and used only
//! through it, so no private key ever exists in the agent's memory or on its disk.
//!
//! A TPM is reached through PKCS#11 rather than a TPM store of our own: tpm2-pkcs11 (Debian
//! `libtpm2-pkcs11-1`) keeps its keys under the TPM's storage hierarchy, wrapped so only that
//! TPM can load them, and brings the TPM's own resource management (through the access broker,
//! `tpm2-abrmd`, or the kernel's `/dev/tpmrm0`). The daemon's tests run a whole lifecycle on a
//! software TPM (swtpm). What a native store (tss-esapi) would add is attestation of the key
//! (TPM2_Certify against the EK), which BRSKI does not ask for today.
//!
//! Objects are found by label: `idevid` (the birth key, made once by [`Pkcs11KeyStore::
//! make_idevid_key`] or provisioned by the device maker), `ldevid` and `ldevid-pending`. A
//! pending key becomes current by destroying the old `ldevid` pair and relabelling: a crash in
//! between leaves only the pending pair, which the agent's recovery promotes
//! ([`crate::machine::recovery`]). ECDSA keys on P-256 and P-384.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use protocol::SignatureError;
use protocol::keys::{Algorithm, PublicKey, Signer};
use ring::digest;

use super::{DeviceKey, KeyLocation, KeyStore};
use crate::error::PlatformError;

/// Label of the birth key.
pub const IDEVID: &str = "idevid";
/// Label of the current operational key.
pub const LDEVID: &str = "ldevid";
/// Label of the operational key waiting for its certificate.
pub const PENDING: &str = "ldevid-pending";

/// Where the token is and how to log in.
#[derive(Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The user PIN.
    pub pin: String,
}

impl std::fmt::Debug for Pkcs11Config {
    /// Never prints the PIN.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// The key store in a PKCS#11 token.
pub struct Pkcs11KeyStore {
    session: Arc<Mutex<Session>>,
    token: String,
    curve: Curve,
    /// Kept so the module stays loaded as long as the session lives.
    _context: Pkcs11,
}

impl std::fmt::Debug for Pkcs11KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11KeyStore")
            .field("curve", &self.curve)
            .finish_non_exhaustive()
    }
}

fn err(what: &str) -> impl Fn(cryptoki::error::Error) -> PlatformError + '_ {
    move |e| PlatformError::Key(format!("PKCS#11 {what}: {e}"))
}

/// A NIST curve as PKCS#11 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

impl Curve {
    fn of(kind: certs::KeyKind) -> Result<Curve, PlatformError> {
        match kind {
            certs::KeyKind::P256 => Ok(Curve::P256),
            certs::KeyKind::P384 => Ok(Curve::P384),
            other => Err(PlatformError::Key(format!(
                "a PKCS#11 key store holds ECDSA keys on P-256 or P-384, not {other:?}"
            ))),
        }
    }

    /// DER of the curve's OID, as CKA_EC_PARAMS.
    fn params(self) -> Vec<u8> {
        match self {
            Curve::P256 => vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Curve::P384 => vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        }
    }

    /// Length of an uncompressed point.
    fn point_len(self) -> usize {
        match self {
            Curve::P256 => 65,
            Curve::P384 => 97,
        }
    }

    fn of_params(params: &[u8]) -> Option<Curve> {
        [Curve::P256, Curve::P384]
            .into_iter()
            .find(|c| c.params() == params)
    }
}

impl Pkcs11KeyStore {
    /// Loads the module, finds the token by its label and logs in. New operational keys are
    /// of `kind` (P-256 or P-384).
    pub fn open(config: &Pkcs11Config, kind: certs::KeyKind) -> Result<Self, PlatformError> {
        let curve = Curve::of(kind)?;
        let context = context(&config.module)?;
        let slot = context
            .get_slots_with_token()
            .map_err(err("listing slots"))?
            .into_iter()
            .find(|slot| {
                context
                    .get_token_info(*slot)
                    .is_ok_and(|info| info.label() == config.token)
            })
            .ok_or_else(|| {
                PlatformError::Key(format!("no PKCS#11 token labelled {:?}", config.token))
            })?;
        let session = context
            .open_rw_session(slot)
            .map_err(err("opening a session"))?;
        // Login is per application: a second store on the same token is logged in already.
        match session.login(
            UserType::User,
            Some(&AuthPin::new(config.pin.clone().into())),
        ) {
            Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(err("logging in")(e)),
        }
        Ok(Pkcs11KeyStore {
            session: Arc::new(Mutex::new(session)),
            token: config.token.clone(),
            curve,
            _context: context,
        })
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key pair labelled `label`, if there is one.
    fn find(&self, label: &str) -> Result<Option<Arc<dyn DeviceKey>>, PlatformError> {
        let session = self.session();
        let private = objects(&session, ObjectClass::PRIVATE_KEY, label)?;
        let public = objects(&session, ObjectClass::PUBLIC_KEY, label)?;
        let (Some(&private), Some(&public)) = (private.first(), public.first()) else {
            return Ok(None);
        };
        let key = TokenKey::new(self.session.clone(), &session, private, public)?;
        Ok(Some(Arc::new(key)))
    }

    /// Generates a key pair labelled `label` inside the token.
    fn generate(&self, label: &str) -> Result<Arc<dyn DeviceKey>, PlatformError> {
        let session = self.session();
        let label_bytes = label.as_bytes().to_vec();
        let public_template = [
            Attribute::Token(true),
            Attribute::Verify(true),
            Attribute::Label(label_bytes.clone()),
            Attribute::EcParams(self.curve.params()),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(label_bytes),
        ];
        let (public, private) = session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(err("generating a key"))?;
        Ok(Arc::new(TokenKey::new(
            self.session.clone(),
            &session,
            private,
            public,
        )?))
    }

    /// Destroys every object labelled `label`.
    fn destroy(&self, label: &str) -> Result<(), PlatformError> {
        let session = self.session();
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            for object in objects(&session, class, label)? {
                session
                    .destroy_object(object)
                    .map_err(err("destroying a key"))?;
            }
        }
        Ok(())
    }

    /// Whether every private key labelled `label` is sensitive and was never extractable (so
    /// it cannot have left the token).
    pub fn protected(&self, label: &str) -> Result<bool, PlatformError> {
        let session = self.session();
        let keys = objects(&session, ObjectClass::PRIVATE_KEY, label)?;
        let mut all = !keys.is_empty();
        for key in keys {
            let attributes = session
                .get_attributes(
                    key,
                    &[
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::NeverExtractable,
                    ],
                )
                .map_err(err("reading key attributes"))?;
            for attribute in attributes {
                all &= match attribute {
                    Attribute::Sensitive(v) | Attribute::NeverExtractable(v) => v,
                    Attribute::Extractable(v) => !v,
                    _ => true,
                };
            }
        }
        Ok(all)
    }

    /// Makes the device's birth key inside the token, once: the factory certifies it from its
    /// CSR (`factory certify`). Refused if the token holds one already.
    pub fn make_idevid_key(&self) -> Result<Arc<dyn DeviceKey>, PlatformError> {
        if self.find(IDEVID)?.is_some() {
            return Err(PlatformError::Key(
                "the token holds a birth key already".into(),
            ));
        }
        self.generate(IDEVID)
    }
}

/// The module loaded and initialized once per process: PKCS#11 allows one initialization per
/// application, and several stores (or agents) may use the same module.
fn context(module: &std::path::Path) -> Result<Pkcs11, PlatformError> {
    static LOADED: OnceLock<Mutex<Vec<(PathBuf, Pkcs11)>>> = OnceLock::new();
    let mut loaded = LOADED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((_, context)) = loaded.iter().find(|(path, _)| path == module) {
        return Ok(context.clone());
    }
    let context = Pkcs11::new(module).map_err(err("loading the module"))?;
    context
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(err("initializing"))?;
    loaded.push((module.to_path_buf(), context.clone()));
    Ok(context)
}

/// The handles of the objects of `class` labelled `label`.
fn objects(
    session: &Session,
    class: ObjectClass,
    label: &str,
) -> Result<Vec<ObjectHandle>, PlatformError> {
    session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::KeyType(KeyType::EC),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(err("finding keys"))
}

impl KeyStore for Pkcs11KeyStore {
    fn idevid_key(&self) -> Result<Arc<dyn DeviceKey>, PlatformError> {
        self.find(IDEVID)?
            .ok_or_else(|| PlatformError::Key("the token holds no birth (IDevID) key".into()))
    }

    fn ldevid_key(&self) -> Result<Option<Arc<dyn DeviceKey>>, PlatformError> {
        self.find(LDEVID)
    }

    fn pending_ldevid_key(&self) -> Result<Option<Arc<dyn DeviceKey>>, PlatformError> {
        self.find(PENDING)
    }

    fn create_pending_ldevid_key(&self) -> Result<Arc<dyn DeviceKey>, PlatformError> {
        self.destroy(PENDING)?;
        self.generate(PENDING)
    }

    fn commit_pending_ldevid_key(&self) -> Result<(), PlatformError> {
        if self.find(PENDING)?.is_none() {
            return Err(PlatformError::Key("no pending key to commit".into()));
        }
        self.destroy(LDEVID)?;
        let session = self.session();
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            for object in objects(&session, class, PENDING)? {
                session
                    .update_attributes(object, &[Attribute::Label(LDEVID.as_bytes().to_vec())])
                    .map_err(err("relabelling a key"))?;
            }
        }
        Ok(())
    }

    fn destroy_ldevid_keys(&self) -> Result<(), PlatformError> {
        self.destroy(PENDING)?;
        self.destroy(LDEVID)
    }

    fn ldevid_key_location(&self) -> KeyLocation {
        KeyLocation::Pkcs11 {
            uri: format!(
                "pkcs11:token={};object={LDEVID};type=private",
                uri_escape(&self.token)
            ),
        }
    }
}

/// Percent-encodes what RFC 7512 does not allow as is in a path attribute value.
fn uri_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A private key object in the token, with its public half read once.
struct TokenKey {
    session: Arc<Mutex<Session>>,
    private: ObjectHandle,
    public: PublicKey,
    curve: Curve,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({:?})", self.public)
    }
}

impl TokenKey {
    fn new(
        shared: Arc<Mutex<Session>>,
        session: &Session,
        private: ObjectHandle,
        public: ObjectHandle,
    ) -> Result<Self, PlatformError> {
        let attributes = session
            .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
            .map_err(err("reading a public key"))?;
        let (mut params, mut point) = (None, None);
        for attribute in attributes {
            match attribute {
                Attribute::EcParams(p) => params = Some(p),
                Attribute::EcPoint(p) => point = Some(p),
                _ => {}
            }
        }
        let curve = params
            .as_deref()
            .and_then(Curve::of_params)
            .ok_or_else(|| PlatformError::Key("a token key on an unsupported curve".into()))?;
        let point = point
            .map(|p| unwrap_octet_string(&p, curve.point_len()))
            .ok_or_else(|| PlatformError::Key("a token key without its public point".into()))?;
        let public = match curve {
            Curve::P256 => PublicKey::p256(&point),
            Curve::P384 => PublicKey::p384(&point),
        }
        .map_err(|e| PlatformError::Key(format!("a token key's public point: {e}")))?;
        Ok(TokenKey {
            session: shared,
            private,
            public,
            curve,
        })
    }
}

/// CKA_EC_POINT is a DER OCTET STRING around the point in most tokens, the bare point in some.
fn unwrap_octet_string(value: &[u8], len: usize) -> Vec<u8> {
    match value {
        [0x04, n, rest @ ..] if usize::from(*n) == len && rest.len() == len => rest.to_vec(),
        _ => value.to_vec(),
    }
}

impl Signer for TokenKey {
    fn algorithm(&self) -> Algorithm {
        match self.curve {
            Curve::P256 => Algorithm::Es256,
            Curve::P384 => Algorithm::Es384,
        }
    }

    fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    /// The fixed-length `r || s` that CKM_ECDSA returns, over the message's digest.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignatureError> {
        let digest = match self.curve {
            Curve::P256 => digest::digest(&digest::SHA256, message),
            Curve::P384 => digest::digest(&digest::SHA384, message),
        };
        let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        session
            .sign(&Mechanism::Ecdsa, self.private, digest.as_ref())
            .map_err(|e| SignatureError::SigningFailed(format!("PKCS#11: {e}")))
    }
}

impl DeviceKey for TokenKey {
    fn sign_x509(&self, message: &[u8]) -> Result<Vec<u8>, SignatureError> {
        Ok(der_signature(&Signer::sign(self, message)?))
    }
}

/// An ECDSA `r || s` as the DER `SEQUENCE { r INTEGER, s INTEGER }` that X.509 and TLS use.
fn der_signature(fixed: &[u8]) -> Vec<u8> {
    let (r, s) = fixed.split_at(fixed.len() / 2);
    let integer = |v: &[u8]| {
        let v = match v.iter().position(|&b| b != 0) {
            Some(first) => &v[first..],
            None => &[0u8][..],
        };
        let mut out = vec![0x02];
        let pad = v[0] & 0x80 != 0;
        push_len(&mut out, v.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
        out
    };
    let body = [integer(r), integer(s)].concat();
    let mut out = vec![0x30];
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        out.push(0x81);
        out.push(len as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_signatures_become_der_that_ring_accepts() {
        use ring::signature::{
            ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
            UnparsedPublicKey,
        };
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        for i in 0..64u8 {
            let message = [i; 40];
            let fixed = key.sign(&rng, &message).unwrap();
            let der = der_signature(fixed.as_ref());
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key().as_ref())
                .verify(&message, &der)
                .unwrap();
        }
        assert_eq!(unwrap_octet_string(&[0x04, 2, 0x04, 9], 2), vec![0x04, 9]);
        assert_eq!(unwrap_octet_string(&[0x04, 9], 2), vec![0x04, 9]);
    }
}
