//! What operators import: manufacturer anchors and vouchers. The rules are the core's
//! ([`crate::core::import`]); here they are loaded for and committed.

use super::{Pending, Service};
use crate::core::LifecycleError;
use crate::core::import::{self, Anchor, Offered, Signer};
use crate::operator::OperatorError;
use crate::store::Change;

use super::queries::{ImportReport, Rejected};

/// Vouchers decided on per atomic write during a bulk import.
const IMPORT_CHUNK: usize = 1000;

/// What an operator imports to trust a manufacturer.
#[derive(
    utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
pub struct AnchorImport {
    /// The manufacturer's root CA certificate(s), PEM.
    pub pem: String,
    /// Its voucher-signing (MASA) certificate, PEM: vouchers are then verified at import.
    #[serde(default)]
    pub masa_pem: Option<String>,
    /// A short name for the manufacturer (`acme`), unique among them, that commands accept in
    /// place of its maker id. Default: from the certificate's organization.
    #[serde(default)]
    pub name: Option<String>,
}

impl Service {
    /// Imports a manufacturer's root CA certificate(s) as trust anchors for IDevIDs, with its
    /// voucher signer and a name. Importing an anchor again updates its name and voucher
    /// signer when they are given. Returns the anchors added or changed.
    pub async fn import_anchor(
        &self,
        request: &AnchorImport,
    ) -> Result<Vec<Anchor>, OperatorError> {
        let bad = |m: String| OperatorError::BadInput(m);
        let offered = certs::files::certs_from_pem(&request.pem)
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .map(|der| {
                crate::trust::TrustStore::check_anchor(&der).map_err(bad)?;
                Ok(Offered {
                    info: certs::CertInfo::parse(&der).map_err(|e| bad(e.to_string()))?,
                    fingerprint: crate::operator::sha256_hex(&der),
                    der,
                })
            })
            .collect::<Result<Vec<_>, OperatorError>>()?;
        let masa = match &request.masa_pem {
            Some(pem) => {
                let certs = certs::files::certs_from_pem(pem).map_err(|e| bad(e.to_string()))?;
                let [der] = certs.as_slice() else {
                    return Err(bad("the MASA PEM must hold exactly one certificate".into()));
                };
                certs::CertInfo::parse(der).map_err(|e| bad(format!("MASA certificate: {e}")))?;
                Some(der.clone())
            }
            None => None,
        };
        let registrar = self.registrar();
        let ours: Vec<Vec<u8>> = registrar
            .roots
            .trusted
            .iter()
            .cloned()
            .chain(registrar.generations().map(|g| g.ca.cert_der().to_vec()))
            .filter_map(|der| certs::CertInfo::parse(&der).ok().map(|i| i.spki_der))
            .collect();
        let changed = self
            .commit(|now| {
                let existing = self.store.anchors()?;
                let (anchors, audit) = import::anchors(
                    &offered,
                    masa.as_deref(),
                    request.name.as_deref(),
                    &existing,
                    &ours,
                    now,
                )
                .map_err(OperatorError::Refused)?;
                let change = Change {
                    anchors: anchors.clone(),
                    audit,
                    ..Change::default()
                };
                Ok::<_, OperatorError>(Pending::of(change, anchors))
            })
            .await?;
        self.reload_trust()?;
        Ok(changed)
    }

    /// Imports a bundle of vouchers (see [`protocol::voucher::encode_bundle`]): each is filed
    /// under its manufacturer and serial, or refused with why (see [`crate::core::import`]).
    pub async fn import_vouchers(&self, bundle: &[u8]) -> Result<ImportReport, OperatorError> {
        let vouchers = protocol::voucher::decode_bundle(bundle)
            .map_err(|e| OperatorError::BadInput(format!("voucher bundle: {e}")))?;
        let signers: Vec<Signer> = self.store.anchors()?.iter().map(Signer::of).collect();
        let mut report = ImportReport::default();
        let filed = import::file_vouchers(&vouchers, &signers);
        let mut todo = Vec::new();
        for (index, outcome) in filed.into_iter().enumerate() {
            match outcome {
                Ok(filed) => todo.push((index, filed)),
                Err((serial, reason)) => report.rejected.push(Rejected {
                    index,
                    serial,
                    reason,
                }),
            }
        }
        for chunk in todo.chunks(IMPORT_CHUNK) {
            let ids: Vec<_> = chunk.iter().map(|(_, f)| f.id.clone()).collect();
            let outcomes = self
                .decide_devices(&ids, |id, record, now| {
                    let (index, filed) = chunk
                        .iter()
                        .find(|(_, f)| &f.id == id)
                        .ok_or_else(|| LifecycleError::Unavailable("lost a voucher".into()))?;
                    import::voucher(
                        filed,
                        &vouchers[*index],
                        record,
                        &self.registrar().roots,
                        now,
                    )
                })
                .await?;
            for ((index, filed), outcome) in chunk.iter().zip(outcomes) {
                match outcome {
                    Ok(outcome) => report.count(filed, &outcome),
                    Err(e) => report.rejected.push(Rejected {
                        index: *index,
                        serial: Some(filed.id.serial.clone()),
                        reason: e.to_string(),
                    }),
                }
            }
        }
        report.rejected.sort_by_key(|r| r.index);
        Ok(report)
    }
}
