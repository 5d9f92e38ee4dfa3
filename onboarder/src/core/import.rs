//! What an operator imports: manufacturer anchors (which IDevIDs are trusted, and whose voucher
//! signer checks their vouchers) and vouchers (which devices are expected).
//!
//! A voucher belongs to the manufacturer whose voucher signer verifies it (and whose anchor it
//! names as `idevid-issuer`, if it names one), or, for a manufacturer imported without its
//! signer, to the one whose anchor it names; it is filed under that maker and its serial.
//! It must pin this owner's root and carry an expiry.

use protocol::keys::PublicKey;
use protocol::message::Response;
use protocol::voucher::Voucher;
use serde::{Deserialize, Serialize};

use super::decision::Decision;
use super::error::LifecycleError;
use super::identity::{DeviceId, MakerId};
use super::policy::OwnerRoots;
use super::record::DeviceRecord;
use super::state::DeviceState;
use crate::audit::AuditEvent;

/// A manufacturer trust anchor imported by the operator: the maker of every device whose
/// IDevID chains to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// SHA-256 of the certificate, hex.
    pub fingerprint: String,
    /// Subject of the certificate.
    pub subject: String,
    /// The certificate, DER.
    #[serde(with = "serde_bytes")]
    pub der: Vec<u8>,
    /// When it was imported.
    pub added_at: u64,
    /// The maker it stands for (derived from its public key).
    pub maker: MakerId,
    /// The operator's short name for the maker, unique among makers (`acme`): what commands
    /// accept in place of the maker id.
    pub name: String,
    /// Its subject key identifier: what vouchers for its devices name as `idevid-issuer`.
    #[serde(default, with = "serde_bytes")]
    pub key_id: Option<Vec<u8>>,
    /// The manufacturer's voucher-signing (MASA) certificate, DER, when the operator gave it:
    /// vouchers are then checked against it at import.
    #[serde(default, with = "serde_bytes")]
    pub masa: Option<Vec<u8>>,
}

/// A manufacturer's voucher signer, as vouchers are checked against it.
#[derive(Debug, Clone)]
pub struct Signer {
    /// The maker.
    pub maker: MakerId,
    /// Its anchor's key id.
    pub key_id: Option<Vec<u8>>,
    /// Its voucher-signing key, when known.
    pub masa: Option<PublicKey>,
}

impl Signer {
    /// The signer of `anchor`.
    pub fn of(anchor: &Anchor) -> Signer {
        Signer {
            maker: anchor.maker.clone(),
            key_id: anchor.key_id.clone(),
            masa: anchor
                .masa
                .as_deref()
                .and_then(|der| certs::CertInfo::parse(der).ok())
                .map(|i| i.public_key),
        }
    }
}

/// A voucher of an import, read and assigned to its device.
#[derive(Debug, Clone)]
pub struct Filed {
    /// The device it is for.
    pub id: DeviceId,
    /// The voucher.
    pub voucher: Voucher,
    /// Whether its signature was checked (its maker's signer is known).
    pub checked: bool,
}

/// Reads the vouchers of a bundle and finds each one's device; a voucher that cannot be read,
/// belongs to no imported manufacturer, or repeats a device of the bundle is refused with why.
pub fn file_vouchers(
    bundle: &[Vec<u8>],
    signers: &[Signer],
) -> Vec<Result<Filed, (Option<String>, String)>> {
    let mut seen = std::collections::HashSet::new();
    bundle
        .iter()
        .map(|bytes| {
            let voucher =
                certs::brski::parse_voucher_unverified(bytes).map_err(|e| (None, e.to_string()))?;
            let serial = voucher.serial_number.clone();
            let reject = |reason: String| (Some(serial.clone()), reason);
            let (maker, checked) = voucher_maker(&voucher, bytes, signers).map_err(reject)?;
            let id = DeviceId::new(maker, &serial).map_err(|e| reject(e.to_string()))?;
            if !seen.insert(id.clone()) {
                return Err(reject("duplicate device in the bundle".into()));
            }
            Ok(Filed {
                id,
                voucher,
                checked,
            })
        })
        .collect()
}

/// Files the voucher `bytes` (read into `filed`) for its device, whose record is `record`: a
/// new device is expected; an expected or onboarding one gets the new voucher; the same voucher
/// again changes nothing; a device further on is refused.
pub fn voucher(
    filed: &Filed,
    bytes: &[u8],
    record: Option<DeviceRecord>,
    roots: &OwnerRoots,
    now: u64,
) -> Result<Decision, LifecycleError> {
    let refuse = |why: String| LifecycleError::BadRequest(why);
    let voucher = &filed.voucher;
    if !roots.trusts(&voucher.pinned_domain_cert) {
        return Err(refuse(
            "the voucher pins a CA that is not one of this owner's roots in force".into(),
        ));
    }
    let expires_on = match voucher.expires_on {
        Some(e) if e <= now => return Err(refuse(format!("expired at {e}"))),
        None => return Err(refuse("a bulk voucher needs an expiry".into())),
        Some(e) => e,
    };
    let id = &filed.id;
    match record {
        None => Ok(Decision::ack(
            DeviceRecord::expected(id.clone(), bytes.to_vec(), Some(expires_on), now),
            vec![AuditEvent::operator(Some(id), "voucher-imported", "", now)],
        )),
        Some(r) if r.voucher.as_deref() == Some(bytes) => Ok(Decision::reply(Response::Ack)),
        Some(mut r) if matches!(r.state, DeviceState::Expected | DeviceState::Onboarding) => {
            r.voucher = Some(bytes.to_vec());
            r.voucher_expires_on = Some(expires_on);
            r.updated_at = now;
            Ok(Decision::ack(
                r,
                vec![AuditEvent::operator(Some(id), "voucher-replaced", "", now)],
            ))
        }
        Some(r) => Err(refuse(format!("{id} is {}", r.state))),
    }
}

/// The maker a voucher belongs to, and whether its signature was checked.
fn voucher_maker(
    voucher: &Voucher,
    bytes: &[u8],
    signers: &[Signer],
) -> Result<(MakerId, bool), String> {
    let names = |s: &Signer| match &voucher.idevid_issuer {
        Some(issuer) => s.key_id.as_ref() == Some(issuer),
        None => true,
    };
    let mut verified: Vec<&MakerId> = signers
        .iter()
        .filter(|s| names(s))
        .filter(|s| {
            s.masa
                .as_ref()
                .is_some_and(|k| certs::brski::open_voucher(bytes, k).is_ok())
        })
        .map(|s| &s.maker)
        .collect();
    verified.sort();
    verified.dedup();
    match verified.as_slice() {
        [maker] => return Ok(((*maker).clone(), true)),
        [_, _, ..] => {
            return Err(
                "the voucher fits several manufacturers; it must name its idevid-issuer".into(),
            );
        }
        [] => {}
    }
    let issuer = voucher
        .idevid_issuer
        .as_ref()
        .ok_or("the voucher names no idevid-issuer and no imported voucher signer verifies it")?;
    let named: Vec<&Signer> = signers
        .iter()
        .filter(|s| s.key_id.as_ref() == Some(issuer))
        .collect();
    if named.iter().any(|s| s.masa.is_some()) {
        return Err(
            "the voucher's signature does not verify with its manufacturer's voucher signer".into(),
        );
    }
    match named.first() {
        Some(s) => Ok((s.maker.clone(), false)),
        None => Err(format!(
            "no imported manufacturer issues IDevIDs with key id {} (import its root with \
             `onboarder anchor import` first)",
            certs::inspect::hex(issuer)
        )),
    }
}

/// An anchor certificate offered for import, already parsed.
#[derive(Debug, Clone)]
pub struct Offered {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// What it says.
    pub info: certs::CertInfo,
    /// SHA-256 of the certificate, hex.
    pub fingerprint: String,
}

/// Plans an anchor import: each offered certificate must be a CA and not one of this owner's
/// own CAs (`ours`, their SubjectPublicKeyInfos); the maker's name is the one given, the one it
/// already has, or one derived from the certificate (made unique), and must not be another
/// maker's. Returns the anchors to write (new or changed) and their audit events.
pub fn anchors(
    offered: &[Offered],
    masa: Option<&[u8]>,
    name: Option<&str>,
    existing: &[Anchor],
    ours: &[Vec<u8>],
    now: u64,
) -> Result<(Vec<Anchor>, Vec<AuditEvent>), LifecycleError> {
    let bad = LifecycleError::BadRequest;
    if offered.is_empty() {
        return Err(bad("no CERTIFICATE in the input".into()));
    }
    if let Some(name) = name {
        check_maker_name(name).map_err(bad)?;
    }
    let mut existing = existing.to_vec();
    let (mut changed, mut audit) = (Vec::new(), Vec::new());
    for cert in offered {
        let info = &cert.info;
        if !info.is_ca {
            return Err(bad(format!("{} is not a CA certificate", info.subject)));
        }
        if ours.contains(&info.spki_der) {
            return Err(bad(format!(
                "{} is this owner's own CA, not a manufacturer's",
                info.subject
            )));
        }
        let maker = MakerId::of_spki(&info.spki_der);
        let name = match (name, existing.iter().find(|a| a.maker == maker)) {
            (Some(name), _) => name.to_string(),
            (None, Some(a)) => a.name.clone(),
            (None, None) => unique_name(&derived_name(info), &existing),
        };
        if let Some(other) = existing.iter().find(|a| a.name == name && a.maker != maker) {
            return Err(bad(format!(
                "the name {name:?} is taken by maker {} ({})",
                other.maker, other.subject
            )));
        }
        let previous = existing.iter().find(|a| a.fingerprint == cert.fingerprint);
        let anchor = Anchor {
            fingerprint: cert.fingerprint.clone(),
            subject: info.subject.clone(),
            der: cert.der.clone(),
            added_at: previous.map_or(now, |a| a.added_at),
            maker,
            name,
            key_id: info.subject_key_id.clone(),
            masa: masa
                .map(<[u8]>::to_vec)
                .or_else(|| previous.and_then(|a| a.masa.clone())),
        };
        let action = match previous {
            Some(p) if *p == anchor => continue,
            Some(_) => "anchor-updated",
            None => "anchor-imported",
        };
        audit.push(AuditEvent::operator(
            None,
            action,
            format!(
                "{} sha256:{} as maker {} ({}){}",
                anchor.subject,
                anchor.fingerprint,
                anchor.maker,
                anchor.name,
                if anchor.masa.is_some() {
                    ", with its voucher signer"
                } else {
                    ""
                }
            ),
            now,
        ));
        existing.retain(|a| a.fingerprint != anchor.fingerprint);
        existing.push(anchor.clone());
        changed.push(anchor);
    }
    Ok((changed, audit))
}

/// Checks an operator's name for a manufacturer.
fn check_maker_name(name: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && name.parse::<MakerId>().is_err();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid manufacturer name {name:?}: 1-32 characters of a-z 0-9 -, not a maker id"
        ))
    }
}

/// A name for a manufacturer from its certificate: its organization (or CN), in lower case
/// with dashes.
fn derived_name(info: &certs::CertInfo) -> String {
    let source = info
        .organization
        .as_deref()
        .or(info.common_name.as_deref())
        .unwrap_or("maker");
    let mut name = String::new();
    for c in source.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    let name: String = name.trim_end_matches('-').chars().take(24).collect();
    if check_maker_name(&name).is_ok() {
        name
    } else {
        "maker".into()
    }
}

/// `base`, or `base-2`, `base-3`, ... if another maker has it.
fn unique_name(base: &str, anchors: &[Anchor]) -> String {
    let taken = |n: &str| anchors.iter().any(|a| a.name == n);
    if !taken(base) {
        return base.to_string();
    }
    (2..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken(n))
        .unwrap_or_else(|| base.to_string())
}

#[cfg(test)]
mod tests;
