//! Certificate path validation against trust anchors, with time checks (rustls-webpki).

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use crate::error::ChainError;

/// What the leaf certificate is being validated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS client (IDevID, LDevID).
    ClientAuth,
    /// A TLS server (the onboarder).
    ServerAuth,
}

/// The signature algorithms accepted in chains.
pub static ALGORITHMS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
];

/// Validates `leaf` (DER) through `intermediates` to one of `anchors` (DER certificates) at
/// time `now` (seconds since the epoch) for `usage`.
pub fn verify(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    anchors: &[Vec<u8>],
    now: u64,
    usage: Usage,
) -> Result<(), ChainError> {
    let anchor_ders: Vec<CertificateDer<'_>> = anchors
        .iter()
        .map(|a| CertificateDer::from(a.as_slice()))
        .collect();
    let anchors = anchor_ders
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_error)?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let leaf = CertificateDer::from(leaf);
    let ee = EndEntityCert::try_from(&leaf).map_err(map_error)?;
    let usage = match usage {
        Usage::ClientAuth => KeyUsage::client_auth(),
        Usage::ServerAuth => KeyUsage::server_auth(),
    };
    ee.verify_for_usage(
        ALGORITHMS,
        &anchors,
        &intermediates,
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(now)),
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(map_error)
}

fn map_error(e: webpki::Error) -> ChainError {
    use webpki::Error as E;
    match e {
        E::CertExpired { .. } => ChainError::Expired,
        E::CertNotValidYet { .. } => ChainError::NotYetValid,
        E::UnknownIssuer => ChainError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => ChainError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => ChainError::WrongUsage,
        other => ChainError::Other(format!("{other:?}")),
    }
}
