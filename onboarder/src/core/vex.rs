//! Vulnerability status per release, from VEX statements (OpenVEX, or CycloneDX VEX) the owner
//! imports, and per device from the release it runs.
//!
//! A statement names products; a product is one of our releases when it is the release's
//! package URL ([`purl`]: `pkg:generic/VENDOR/CLASS@VERSION`) or carries the image's SHA-256.
//! Statements naming nothing we hold are reported back, not kept. A later statement about the
//! same vulnerability and release replaces the earlier one.
//!
//! A device is affected when the release it runs is `affected` (or `under-investigation`,
//! shown as such); the release that fixes it is the lowest release of its class above the one
//! it runs for which the vulnerability is `fixed` or `not-affected`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::release::Release;

/// Largest VEX document accepted.
pub const MAX_VEX: usize = 4 * 1024 * 1024;
/// Longest vulnerability name kept.
const MAX_NAME: usize = 128;

/// What a statement says of a release.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VexStatus {
    /// The release is not affected.
    NotAffected,
    /// The release is affected.
    Affected,
    /// The release contains the fix.
    Fixed,
    /// Not known yet.
    UnderInvestigation,
}

impl VexStatus {
    /// Whether a device running a release with this status is exposed (or may be).
    pub fn exposed(self) -> bool {
        matches!(self, VexStatus::Affected | VexStatus::UnderInvestigation)
    }

    /// Whether a release with this status is a fix for a device exposed on an earlier one.
    pub fn fixes(self) -> bool {
        matches!(self, VexStatus::Fixed | VexStatus::NotAffected)
    }
}

/// One statement about one vulnerability and one of our releases.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// The vulnerability (`CVE-2026-1234`, `GHSA-...`).
    pub vulnerability: String,
    /// The release's image digest, hex.
    pub release: String,
    /// What the statement says.
    pub status: VexStatus,
    /// Why not affected, or what to do, as the document said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// SHA-256 of the document it came from, hex.
    pub document: String,
}

/// Why a VEX document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VexError {
    /// Over [`MAX_VEX`].
    #[error("a VEX document of {0} bytes; at most {MAX_VEX}")]
    TooLarge(usize),
    /// Not JSON, or neither OpenVEX nor CycloneDX.
    #[error("not a VEX document: {0}")]
    Malformed(String),
    /// No statement names a release the onboarder holds.
    #[error("no statement names a release on record (products: {0})")]
    NoKnownRelease(String),
}

/// The package URL a VEX statement names a release by (each part percent-encoded, as the
/// purl specification asks).
pub fn purl(release: &Release) -> String {
    fn part(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect()
    }
    format!(
        "pkg:generic/{}/{}@{}",
        part(&release.vendor_id),
        part(&release.class_id),
        part(&release.version)
    )
}

/// The statements of `document` about `releases`, and the products it names that are none of
/// them.
pub fn parse(
    document: &[u8],
    releases: &[Release],
) -> Result<(Vec<Statement>, Vec<String>), VexError> {
    if document.len() > MAX_VEX {
        return Err(VexError::TooLarge(document.len()));
    }
    let doc: Value =
        serde_json::from_slice(document).map_err(|e| VexError::Malformed(e.to_string()))?;
    let digest = hex::encode(protocol::manifest::sha256(document));
    let raw = if doc.get("statements").is_some() {
        openvex(&doc)?
    } else if doc.get("bomFormat").and_then(Value::as_str) == Some("CycloneDX") {
        cyclonedx(&doc)?
    } else {
        return Err(VexError::Malformed(
            "neither OpenVEX (`statements`) nor CycloneDX (`bomFormat`)".into(),
        ));
    };
    let mut statements = Vec::new();
    let mut unknown = Vec::new();
    for (vulnerability, products, status, detail) in raw {
        for product in products {
            match releases.iter().find(|r| product.names(r)) {
                Some(release) => statements.push(Statement {
                    vulnerability: vulnerability.clone(),
                    release: hex::encode(&release.digest),
                    status,
                    detail: detail.clone(),
                    document: digest.clone(),
                }),
                None => unknown.push(product.label()),
            }
        }
    }
    if statements.is_empty() {
        return Err(VexError::NoKnownRelease(unknown.join(", ")));
    }
    Ok((statements, unknown))
}

/// A product as a statement names it.
struct Product {
    ids: Vec<String>,
    sha256: Option<String>,
}

impl Product {
    fn names(&self, release: &Release) -> bool {
        let purl = purl(release);
        self.ids.contains(&purl)
            || self
                .sha256
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(&hex::encode(&release.digest)))
    }

    fn label(&self) -> String {
        self.ids
            .first()
            .cloned()
            .or_else(|| self.sha256.clone())
            .unwrap_or_else(|| "(unnamed)".into())
    }
}

type Raw = Vec<(String, Vec<Product>, VexStatus, Option<String>)>;

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn vulnerability_name(name: Option<String>) -> Result<String, VexError> {
    match name {
        Some(n) if !n.is_empty() && n.len() <= MAX_NAME => Ok(n),
        _ => Err(VexError::Malformed(format!(
            "a statement without a vulnerability name of 1 to {MAX_NAME} bytes"
        ))),
    }
}

/// OpenVEX (0.0.1's `vulnerability` string and 0.2.0's object with `name`).
fn openvex(doc: &Value) -> Result<Raw, VexError> {
    let statements = doc
        .get("statements")
        .and_then(Value::as_array)
        .ok_or_else(|| VexError::Malformed("`statements` is not a list".into()))?;
    let mut out = Vec::new();
    for s in statements {
        let vulnerability = vulnerability_name(match s.get("vulnerability") {
            Some(Value::String(name)) => Some(name.clone()),
            Some(v) => text(v, "name").or_else(|| text(v, "@id")),
            None => None,
        })?;
        let status = match s.get("status").and_then(Value::as_str) {
            Some("not_affected") => VexStatus::NotAffected,
            Some("affected") => VexStatus::Affected,
            Some("fixed") => VexStatus::Fixed,
            Some("under_investigation") => VexStatus::UnderInvestigation,
            other => {
                return Err(VexError::Malformed(format!(
                    "{vulnerability}: status {other:?}"
                )));
            }
        };
        let products = s
            .get("products")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .map(|p| match p {
                        Value::String(id) => Product {
                            ids: vec![id.clone()],
                            sha256: None,
                        },
                        p => Product {
                            ids: text(p, "@id")
                                .into_iter()
                                .chain(p.get("identifiers").and_then(|i| text(i, "purl")))
                                .collect(),
                            sha256: p.get("hashes").and_then(|h| text(h, "sha-256")),
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        let detail = text(s, "justification")
            .or_else(|| text(s, "impact_statement"))
            .or_else(|| text(s, "action_statement"));
        out.push((vulnerability, products, status, detail));
    }
    Ok(out)
}

/// CycloneDX VEX: `vulnerabilities[]` with `analysis.state` and `affects[].ref`.
fn cyclonedx(doc: &Value) -> Result<Raw, VexError> {
    let vulnerabilities = doc
        .get("vulnerabilities")
        .and_then(Value::as_array)
        .ok_or_else(|| VexError::Malformed("`vulnerabilities` is not a list".into()))?;
    let mut out = Vec::new();
    for v in vulnerabilities {
        let vulnerability = vulnerability_name(text(v, "id"))?;
        let analysis = v.get("analysis").cloned().unwrap_or(Value::Null);
        let status = match analysis.get("state").and_then(Value::as_str) {
            Some("resolved" | "resolved_with_pedigree") => VexStatus::Fixed,
            Some("exploitable") => VexStatus::Affected,
            Some("in_triage") | None => VexStatus::UnderInvestigation,
            Some("false_positive" | "not_affected") => VexStatus::NotAffected,
            Some(other) => {
                return Err(VexError::Malformed(format!(
                    "{vulnerability}: analysis state {other:?}"
                )));
            }
        };
        let products = v
            .get("affects")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| text(p, "ref"))
                    .map(|id| Product {
                        ids: vec![id],
                        sha256: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let detail = text(&analysis, "justification").or_else(|| text(&analysis, "detail"));
        out.push((vulnerability, products, status, detail));
    }
    Ok(out)
}

/// One vulnerability a device is exposed to.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exposure {
    /// The vulnerability.
    pub vulnerability: String,
    /// `affected` or `under-investigation`.
    pub status: VexStatus,
    /// The release that fixes it, if one is on record: its version.
    pub fixed_in: Option<String>,
    /// Its image digest, hex (what a campaign names).
    pub fixed_in_digest: Option<String>,
}

/// What the device running `running` is exposed to, given every release and statement.
pub fn exposure(
    running: &Release,
    releases: &[Release],
    statements: &[Statement],
) -> Vec<Exposure> {
    let running_hex = hex::encode(&running.digest);
    let mut out: Vec<Exposure> = statements
        .iter()
        .filter(|s| s.release == running_hex && s.status.exposed())
        .map(|s| {
            let fix = releases
                .iter()
                .filter(|r| {
                    r.vendor_id == running.vendor_id
                        && r.class_id == running.class_id
                        && r.sequence > running.sequence
                })
                .filter(|r| {
                    let hex = hex::encode(&r.digest);
                    statements.iter().any(|t| {
                        t.vulnerability == s.vulnerability && t.release == hex && t.status.fixes()
                    })
                })
                .min_by_key(|r| r.sequence);
            Exposure {
                vulnerability: s.vulnerability.clone(),
                status: s.status,
                fixed_in: fix.map(|r| r.version.clone()),
                fixed_in_digest: fix.map(|r| hex::encode(&r.digest)),
            }
        })
        .collect();
    out.sort_by(|a, b| a.vulnerability.cmp(&b.vulnerability));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str, sequence: u64) -> Release {
        Release {
            digest: vec![sequence as u8; 32],
            manifest: Vec::new(),
            vendor_id: "acme".into(),
            class_id: "sensor-1".into(),
            sequence,
            version: version.into(),
            size: 1,
            uploaded_at: 0,
            sbom: None,
        }
    }

    #[test]
    fn openvex_marks_a_release_affected_and_another_fixed() {
        let releases = [
            release("1.0.0", 1),
            release("1.1.0", 2),
            release("1.2.0", 3),
        ];
        let doc = serde_json::json!({
            "@context": "https://openvex.dev/ns/v0.2.0",
            "statements": [
                {"vulnerability": {"name": "CVE-2026-0001"},
                 "products": [{"@id": "pkg:generic/acme/sensor-1@1.0.0"}],
                 "status": "affected", "action_statement": "update to 1.2.0"},
                {"vulnerability": {"name": "CVE-2026-0001"},
                 "products": [{"@id": "x", "hashes": {"sha-256": hex::encode([3u8; 32])}},
                              {"@id": "pkg:generic/other/thing@9"}],
                 "status": "fixed"}
            ]
        });
        let (statements, unknown) = parse(&serde_json::to_vec(&doc).unwrap(), &releases).unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(unknown, vec!["pkg:generic/other/thing@9".to_string()]);
        let exposed = exposure(&releases[0], &releases, &statements);
        assert_eq!(exposed.len(), 1);
        assert_eq!(exposed[0].fixed_in.as_deref(), Some("1.2.0"));
        assert!(exposure(&releases[2], &releases, &statements).is_empty());
        // 1.1.0 has no statement: nothing known against it.
        assert!(exposure(&releases[1], &releases, &statements).is_empty());
    }

    #[test]
    fn cyclonedx_vex_is_read_too() {
        let releases = [release("1.0.0", 1)];
        let doc = serde_json::json!({
            "bomFormat": "CycloneDX", "specVersion": "1.5",
            "vulnerabilities": [{"id": "CVE-2026-0002",
                "analysis": {"state": "exploitable"},
                "affects": [{"ref": "pkg:generic/acme/sensor-1@1.0.0"}]}]
        });
        let (statements, _) = parse(&serde_json::to_vec(&doc).unwrap(), &releases).unwrap();
        assert_eq!(statements[0].status, VexStatus::Affected);
        let exposed = exposure(&releases[0], &releases, &statements);
        assert_eq!(exposed[0].fixed_in, None);
    }

    #[test]
    fn bad_documents_are_refused_typed() {
        let releases = [release("1.0.0", 1)];
        assert!(matches!(
            parse(b"{", &releases),
            Err(VexError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"{}", &releases),
            Err(VexError::Malformed(_))
        ));
        let nothing_known = serde_json::json!({"statements": [{"vulnerability": "CVE-1",
            "products": ["pkg:generic/x/y@1"], "status": "affected"}]});
        assert!(matches!(
            parse(&serde_json::to_vec(&nothing_known).unwrap(), &releases),
            Err(VexError::NoKnownRelease(_))
        ));
        let bad_status = serde_json::json!({"statements": [{"vulnerability": "CVE-1",
            "products": ["pkg:generic/acme/sensor-1@1.0.0"], "status": "maybe"}]});
        assert!(matches!(
            parse(&serde_json::to_vec(&bad_status).unwrap(), &releases),
            Err(VexError::Malformed(_))
        ));
        assert!(matches!(
            parse(&vec![b' '; MAX_VEX + 1], &releases),
            Err(VexError::TooLarge(_))
        ));
    }
}
