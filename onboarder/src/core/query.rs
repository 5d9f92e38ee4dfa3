//! What a device can be found by: the terms of the device index, and queries over them.
//!
//! Every device write moves the device's index entries and the tallies of its terms in the same
//! atomic write (the service derives them from the record it replaces and the new one), so a
//! search walks the entries of one term instead of reading every record, and the number of
//! devices per term is one lookup. A query names at most one value per field; the search walks
//! the rarest of its terms (by tally) and checks the rest on each record it reads.
//!
//! Index keys are text, in an order both stores keep (bytes, the "C" collation):
//!
//! ```text
//! <field>/<value>/<maker>/<serial>   field: state, class, firmware, tag, attr (value k=v)
//! serial/<serial>/<maker>            every device, for search by serial (prefix)
//! expiry/<notAfter, 20 digits>/<maker>/<serial>   the newest live certificate's expiry
//! ```
//!
//! Values are escaped (`%` and `/`) so a value cannot reach into another's range.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::decision::Decision;
use super::error::LifecycleError;
use super::identity::DeviceId;
use super::record::DeviceRecord;
use super::state::DeviceState;
use crate::audit::AuditEvent;

/// Tags and attributes a device may carry, at most.
pub const MAX_LABELS: usize = 32;
/// Longest tag, attribute name or value, query field.
pub const MAX_LABEL_LEN: usize = 128;

/// Prefix of the index entries of every device, by serial.
pub const SERIAL: &str = "serial/";
/// Prefix of the index entries by certificate expiry.
pub const EXPIRY: &str = "expiry/";

/// A search over the fleet. Every field set must hold (and every tag and attribute named).
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    /// Serial starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Lifecycle state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<DeviceState>,
    /// Device class (model) as reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Firmware version as reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// Operator tags the device carries (all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Operator attributes the device carries with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// The device's newest live certificate expires before this time (seconds since the
    /// epoch). Devices without a live certificate never match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_before: Option<u64>,
}

impl DeviceQuery {
    /// Refuses a query with an empty or oversized field.
    pub fn validate(&self) -> Result<(), LifecycleError> {
        let texts = self
            .serial
            .iter()
            .chain(&self.class)
            .chain(&self.firmware)
            .chain(&self.tags)
            .chain(self.attributes.keys())
            .chain(self.attributes.values());
        for text in texts {
            label_ok(text)?;
        }
        if self.tags.len() + self.attributes.len() > MAX_LABELS {
            return Err(LifecycleError::BadRequest(format!(
                "a query names at most {MAX_LABELS} tags and attributes"
            )));
        }
        Ok(())
    }

    /// Whether `record` matches.
    pub fn matches(&self, record: &DeviceRecord) -> bool {
        self.serial
            .as_ref()
            .is_none_or(|s| record.id.serial.starts_with(s.as_str()))
            && self.state.is_none_or(|s| record.state == s)
            && self
                .class
                .as_ref()
                .is_none_or(|c| record.class_id.as_ref() == Some(c))
            && self
                .firmware
                .as_ref()
                .is_none_or(|f| record.firmware_version.as_ref() == Some(f))
            && self.tags.iter().all(|t| record.tags.contains(t))
            && self
                .attributes
                .iter()
                .all(|(k, v)| record.attributes.get(k) == Some(v))
            && self
                .expires_before
                .is_none_or(|t| expiry(record).is_some_and(|e| e < t))
    }

    /// The query's equality terms (each one an index range).
    pub fn terms(&self) -> Vec<String> {
        let mut terms = Vec::new();
        if let Some(s) = self.state {
            terms.push(term("state", &s.to_string()));
        }
        if let Some(c) = &self.class {
            terms.push(term("class", c));
        }
        if let Some(f) = &self.firmware {
            terms.push(term("firmware", f));
        }
        terms.extend(self.tags.iter().map(|t| term("tag", t)));
        terms.extend(
            self.attributes
                .iter()
                .map(|(k, v)| term("attr", &format!("{k}={v}"))),
        );
        terms
    }
}

/// Refuses an empty or oversized label, or one with a comma or control characters.
pub fn label_ok(text: &str) -> Result<(), LifecycleError> {
    // No comma: lists of labels are written comma-separated (in a search's URL).
    if text.is_empty()
        || text.len() > MAX_LABEL_LEN
        || text.chars().any(|c| c.is_control() || c == ',')
    {
        return Err(LifecycleError::BadRequest(format!(
            "labels and query fields are 1 to {MAX_LABEL_LEN} bytes, without commas or control \
             characters"
        )));
    }
    Ok(())
}

/// The term `field/value`, the value escaped.
pub fn term(field: &str, value: &str) -> String {
    format!("{field}/{}", escape(value))
}

fn escape(value: &str) -> String {
    value.replace('%', "%25").replace('/', "%2F")
}

/// The terms `record` is found by (and counted under: each is a tally).
pub fn terms_of(record: &DeviceRecord) -> Vec<String> {
    let mut terms = vec![term("state", &record.state.to_string())];
    if let Some(c) = &record.class_id {
        terms.push(term("class", c));
    }
    if let Some(f) = &record.firmware_version {
        terms.push(term("firmware", f));
    }
    terms.extend(record.tags.iter().map(|t| term("tag", t)));
    terms.extend(
        record
            .attributes
            .iter()
            .map(|(k, v)| term("attr", &format!("{k}={v}"))),
    );
    terms
}

/// The expiry of the record's newest live certificate.
pub fn expiry(record: &DeviceRecord) -> Option<u64> {
    record
        .certificates
        .iter()
        .filter(|c| c.is_live())
        .map(|c| c.not_after)
        .max()
}

/// The index key of the expiry `at`, without the device (a range bound).
pub fn expiry_key(at: u64) -> String {
    format!("{EXPIRY}{at:020}/")
}

/// The index keys of `record`.
pub fn index_keys(record: &DeviceRecord) -> BTreeSet<String> {
    let id = &record.id;
    let mut keys: BTreeSet<String> = terms_of(record)
        .into_iter()
        .map(|t| format!("{t}/{}/{}", id.maker, escape(&id.serial)))
        .collect();
    keys.insert(format!("{SERIAL}{}/{}", escape(&id.serial), id.maker));
    if let Some(at) = expiry(record) {
        keys.insert(format!(
            "{}{}/{}",
            expiry_key(at),
            id.maker,
            escape(&id.serial)
        ));
    }
    keys
}

/// Operator labels to change on a device.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Labels {
    /// Tags to add.
    #[serde(default)]
    pub add_tags: BTreeSet<String>,
    /// Tags to remove.
    #[serde(default)]
    pub remove_tags: BTreeSet<String>,
    /// Attributes to set.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Attributes to remove.
    #[serde(default)]
    pub unset: BTreeSet<String>,
}

impl Labels {
    /// Refuses malformed labels.
    pub fn validate(&self) -> Result<(), LifecycleError> {
        for text in self
            .add_tags
            .iter()
            .chain(&self.remove_tags)
            .chain(self.set.keys())
            .chain(self.set.values())
            .chain(&self.unset)
        {
            label_ok(text)?;
        }
        if self.set.keys().any(|k| k.contains('=')) {
            return Err(LifecycleError::BadRequest(
                "an attribute's name has no '='".into(),
            ));
        }
        Ok(())
    }

    /// Applies the change to `record`, refusing labels that are malformed or too many.
    /// Returns whether anything changed.
    pub fn apply(&self, record: &mut DeviceRecord) -> Result<bool, LifecycleError> {
        self.validate()?;
        let mut tags = record.tags.clone();
        tags.extend(self.add_tags.iter().cloned());
        tags.retain(|t| !self.remove_tags.contains(t));
        let mut attributes = record.attributes.clone();
        attributes.extend(self.set.iter().map(|(k, v)| (k.clone(), v.clone())));
        attributes.retain(|k, _| !self.unset.contains(k));
        if tags.len() + attributes.len() > MAX_LABELS {
            return Err(LifecycleError::BadRequest(format!(
                "a device carries at most {MAX_LABELS} tags and attributes"
            )));
        }
        let changed = record.tags != tags || record.attributes != attributes;
        (record.tags, record.attributes) = (tags, attributes);
        Ok(changed)
    }
}

/// Changes a device's operator labels. Any device the onboarder knows may be labelled, in any
/// state; labelling again with what it already carries changes nothing.
pub fn label(
    id: &DeviceId,
    record: Option<DeviceRecord>,
    labels: &Labels,
    now: u64,
) -> Result<Decision, LifecycleError> {
    let mut record = super::access::known(id, record)?;
    if !labels.apply(&mut record)? {
        return Ok(Decision::reply(protocol::message::Response::Ack));
    }
    record.updated_at = now;
    let detail = format!("tags {:?}, attributes {:?}", record.tags, record.attributes);
    Ok(Decision::ack(
        record,
        vec![AuditEvent::operator(Some(id), "labelled", detail, now)],
    ))
}

/// The items of a comma-separated list, trimmed, empty ones dropped: how the search API, the
/// console's forms and the command line take several tags or attributes in one field.
pub fn comma_list(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// An attribute written `NAME=VALUE`.
pub fn name_value(text: &str) -> Result<(String, String), LifecycleError> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| LifecycleError::BadRequest(format!("attribute {text:?} is not NAME=VALUE")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{DeviceId, MakerId};

    fn record(serial: &str) -> DeviceRecord {
        let id = DeviceId::new(MakerId::of_spki(b"k"), serial).unwrap();
        DeviceRecord::expected(id, vec![1], None, 1)
    }

    #[test]
    fn a_record_is_found_by_each_of_its_terms_and_by_serial() {
        let mut r = record("SN-1");
        r.class_id = Some("thermo/v2".into());
        r.tags.insert("floor-3".into());
        let keys = index_keys(&r);
        assert!(keys.iter().any(|k| k.starts_with("class/thermo%2Fv2/")));
        assert!(keys.iter().any(|k| k.starts_with("serial/SN-1/")));
        assert!(keys.iter().any(|k| k.starts_with("tag/floor-3/")));
        let q = DeviceQuery {
            class: Some("thermo/v2".into()),
            tags: vec!["floor-3".into()],
            ..Default::default()
        };
        assert!(q.matches(&r));
        assert!(
            q.terms()
                .iter()
                .all(|t| keys.iter().any(|k| k.starts_with(t)))
        );
        let other = DeviceQuery {
            tags: vec!["floor-4".into()],
            ..Default::default()
        };
        assert!(!other.matches(&r));
    }

    #[test]
    fn labels_are_bounded_and_report_whether_they_changed() {
        let mut r = record("SN-1");
        let mut l = Labels::default();
        l.add_tags.insert("a".into());
        assert!(l.apply(&mut r).unwrap());
        assert!(!l.apply(&mut r).unwrap());
        let many = Labels {
            add_tags: (0..=MAX_LABELS).map(|i| i.to_string()).collect(),
            ..Labels::default()
        };
        let before = r.clone();
        assert!(many.apply(&mut r).is_err());
        assert_eq!(r, before, "a refused change leaves the record as it was");
        let bad = Labels {
            set: [("k=1".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        assert!(bad.apply(&mut r).is_err());
    }
}
