//! TLS for the device listeners (QUIC: TLS 1.3 only; HTTPS: see [`super::https`]), ring as the one crypto provider, and a client
//! verifier that accepts IDevIDs from imported manufacturers and LDevIDs from our own CA.

use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

use crate::service::Clock;
use crate::trust::TrustStore;

/// The one crypto provider (rustls and quinn default to different ones; naming it avoids a
/// run-time panic when both are compiled in), with TLS_AES_128_GCM_SHA256 preferred: it
/// matches the 128-bit strength of our P-256 keys, and its SHA-256 and AES-128 run on the
/// CPU's extensions where the default first choice's SHA-384 does not (2.7 % of the server's
/// onboarding CPU was SHA-512 blocks).
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Verifies device client certificates against the current trust store.
#[derive(Debug)]
pub struct DeviceCertVerifier {
    trust: Arc<TrustStore>,
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl DeviceCertVerifier {
    /// A verifier reading anchors from `trust` at every handshake; a client certificate is
    /// required.
    pub fn new(trust: Arc<TrustStore>) -> Self {
        DeviceCertVerifier {
            trust,
            provider: provider(),
            mandatory: true,
        }
    }

    /// The same, but a client may present none (HTTPS: some EST resources are public); one it
    /// presents is checked as strictly.
    pub fn optional(trust: Arc<TrustStore>) -> Self {
        DeviceCertVerifier {
            mandatory: false,
            ..DeviceCertVerifier::new(trust)
        }
    }
}

fn certificate_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    rustls::Error::InvalidCertificate(match e {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        E::CertRevoked => CertificateError::Revoked,
        E::BadDer => CertificateError::BadEncoding,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    })
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.trust
            .verify_client(end_entity, intermediates, now)
            .map_err(certificate_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The registrar's certificate and key, replaceable while the server runs (renewal, CA and
/// root rollover): handshakes after a swap present the new pair, sessions already open keep
/// theirs. Every transport presents it: rustls (QUIC, HTTPS) through [`ResolvesServerCert`],
/// OpenSSL (CoAPS) from [`RegistrarIdentity::pair`], rebuilt when the version moves.
#[derive(Debug)]
pub struct RegistrarIdentity(RwLock<Current>);

#[derive(Debug)]
struct Current {
    certified: Arc<CertifiedKey>,
    pair: Arc<IdentityPair>,
}

/// The registrar's chain and key as they are on disk.
pub struct IdentityPair {
    /// Leaf first, DER.
    pub chain: Vec<Vec<u8>>,
    /// The key, PKCS#8 PEM. Never logged.
    pub key_pem: String,
    /// Counts replacements, so a transport knows when to rebuild.
    pub version: u64,
}

impl std::fmt::Debug for IdentityPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityPair")
            .field("chain", &self.chain.len())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl RegistrarIdentity {
    /// The identity of `chain` (leaf first) and its `key`.
    pub fn new(chain: &[Vec<u8>], key: &certs::KeyPair) -> Result<Self, rustls::Error> {
        Ok(RegistrarIdentity(RwLock::new(Current {
            certified: certified(chain, key)?,
            pair: Arc::new(IdentityPair {
                chain: chain.to_vec(),
                key_pem: key.to_pem(),
                version: 0,
            }),
        })))
    }

    /// Presents `chain` and `key` from the next handshake on.
    pub fn replace(&self, chain: &[Vec<u8>], key: &certs::KeyPair) -> Result<(), rustls::Error> {
        let certified = certified(chain, key)?;
        let mut current = self.0.write().unwrap_or_else(|e| e.into_inner());
        let version = current.pair.version + 1;
        *current = Current {
            certified,
            pair: Arc::new(IdentityPair {
                chain: chain.to_vec(),
                key_pem: key.to_pem(),
                version,
            }),
        };
        Ok(())
    }

    /// The chain and key in force now.
    pub fn pair(&self) -> Arc<IdentityPair> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .pair
            .clone()
    }
}

fn certified(chain: &[Vec<u8>], key: &certs::KeyPair) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let chain = chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider())?))
}

impl ResolvesServerCert for RegistrarIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .certified
                .clone(),
        )
    }
}

/// The service's clock as TLS's: certificates are checked at the time every other rule uses.
pub struct ClockTime(pub Clock);

impl std::fmt::Debug for ClockTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockTime")
    }
}

impl rustls::time_provider::TimeProvider for ClockTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            (self.0)(),
        )))
    }
}

/// The server's TLS configuration: the registrar's identity, mandatory client certificates,
/// checked at the time of `clock`.
pub fn server_config(
    identity: Arc<RegistrarIdentity>,
    trust: Arc<TrustStore>,
    clock: Clock,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config =
        rustls::ServerConfig::builder_with_details(provider(), Arc::new(ClockTime(clock)))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(DeviceCertVerifier::new(trust)))
            .with_cert_resolver(identity);
    config.alpn_protocols = vec![protocol::ALPN.to_vec()];
    no_resumption(&mut config);
    Ok(config)
}

/// No session tickets and no session cache: a resumed session skips the client certificate's
/// verification, which is where a revoked or retired device is refused, so resumption would
/// need that check done again elsewhere. Devices do not resume, so tickets (rustls sends two
/// after each handshake by default) were sealed, sent and cached for nothing.
pub fn no_resumption(config: &mut rustls::ServerConfig) {
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
}
