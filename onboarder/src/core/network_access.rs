//! Network access: whether a network access server (FreeRADIUS behind the owner's access points
//! and switches) lets a device on, and where it puts it.
//!
//! The RADIUS server checks the certificate chain and the CRL itself; these rules add what only
//! the onboarder knows at the moment of the request: the device's state (active, quarantined,
//! being or already decommissioned), whether this exact certificate still authenticates it
//! (a superseded one only through its grace period), its own Wi-Fi passphrase, and the network
//! policy the operator mapped to its MUD URL (RFC 8520, read from its IDevID) or its class.

use serde::{Deserialize, Serialize};

use super::identity::DeviceId;
use super::record::DeviceRecord;
use super::state::DeviceState;
use protocol::message::NetworkProfile;

/// The hardware fact that names the device's network interface (the MAC address its access
/// point sees), as the device reports it in its hello.
pub const MAC_FACT: &str = "mac";

/// Where an admitted device goes: a VLAN (RADIUS `Tunnel-Private-Group-Id`), a filter
/// (`Filter-Id`), both, or neither (the access point's default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// VLAN id or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<String>,
    /// Filter (ACL) name the access server applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_id: Option<String>,
}

/// One mapping of the operator's: devices whose MUD URL and class match (a field left out
/// matches anything) are placed as it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRule {
    /// The MUD URL the device's IDevID carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mud_url: Option<String>,
    /// The device class it reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Where it goes.
    #[serde(flatten)]
    pub placement: Placement,
}

/// What a quarantined device gets from the network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuarantineAccess {
    /// Nothing: refused.
    #[default]
    Reject,
    /// A quarantine VLAN, where it can reach only what the operator leaves there.
    Vlan(String),
}

/// The operator's network policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessPolicy {
    /// Mappings, first match wins.
    #[serde(default)]
    pub rules: Vec<PlacementRule>,
    /// Where a device no rule matches goes.
    #[serde(default)]
    pub default: Placement,
    /// What a quarantined device gets.
    #[serde(default)]
    pub quarantine: QuarantineAccess,
}

impl AccessPolicy {
    /// Where `record` goes when admitted: the first rule that matches, else the default.
    pub fn placement(&self, record: &DeviceRecord) -> Placement {
        let matches = |wanted: &Option<String>, has: &Option<String>| {
            wanted.is_none() || wanted.as_deref() == has.as_deref()
        };
        self.rules
            .iter()
            .find(|r| matches(&r.mud_url, &record.mud_url) && matches(&r.class, &record.class_id))
            .map_or_else(|| self.default.clone(), |r| r.placement.clone())
    }
}

/// The answer to one access request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Let on, placed as said.
    Granted {
        /// The device.
        device: DeviceId,
        /// Where it goes.
        placement: Placement,
        /// Its own Wi-Fi passphrase (MAC authorization of a passphrase profile).
        passphrase: Option<String>,
        /// Whether it is let on only into quarantine.
        quarantined: bool,
    },
    /// Refused.
    Refused {
        /// The device, when the request named one we know.
        device: Option<DeviceId>,
        /// Why, for the audit log and the access server's log.
        reason: String,
    },
}

/// Whether the device `id` may use its certificate with serial `cert_serial` (EAP-TLS), at
/// `now`, a superseded certificate keeping `grace` seconds.
pub fn by_certificate(
    id: &DeviceId,
    record: Option<&DeviceRecord>,
    cert_serial: &str,
    now: u64,
    grace: u64,
    policy: &AccessPolicy,
) -> Access {
    let Some(record) = record else {
        return refused(None, format!("{id} is not a device of ours"));
    };
    let quarantined = match admissible(record, policy) {
        Ok(quarantined) => quarantined,
        Err(refusal) => return refusal,
    };
    let Some(cert) = record
        .certificates
        .iter()
        .find(|c| same_serial(&c.serial, cert_serial))
    else {
        return refused(
            Some(id),
            format!("certificate {cert_serial} was not issued to {id}"),
        );
    };
    if !cert.accepted_at(now, grace) {
        return refused(
            Some(id),
            format!("certificate {} is no longer accepted", cert.serial),
        );
    }
    granted(record, None, quarantined, policy)
}

/// Whether the device whose network interface is `mac` may join with its own passphrase
/// (MAC authorization for a per-device pre-shared key); `record` is the device that reported
/// the address, if one did.
pub fn by_mac(mac: &str, record: Option<&DeviceRecord>, policy: &AccessPolicy) -> Access {
    let Some(record) = record.filter(|r| reported_mac(r).as_deref() == Some(mac)) else {
        return refused(None, format!("no device reported MAC address {mac}"));
    };
    let quarantined = match admissible(record, policy) {
        Ok(quarantined) => quarantined,
        Err(refusal) => return refusal,
    };
    let Some(NetworkProfile::Wifi { psk, .. }) = &record.network else {
        return refused(
            Some(&record.id),
            format!("{} holds no Wi-Fi passphrase", record.id),
        );
    };
    granted(record, Some(psk.clone()), quarantined, policy)
}

/// The state rules both methods share: an active device may on, a quarantined one only where
/// the policy puts quarantine (`Ok(true)`), no other.
fn admissible(record: &DeviceRecord, policy: &AccessPolicy) -> Result<bool, Access> {
    let id = &record.id;
    match (record.state, &policy.quarantine) {
        (DeviceState::Active, _) => Ok(false),
        (DeviceState::Quarantined, QuarantineAccess::Vlan(_)) => Ok(true),
        (state, _) => Err(refused(Some(id), format!("{id} is {state}"))),
    }
}

fn granted(
    record: &DeviceRecord,
    passphrase: Option<String>,
    quarantined: bool,
    policy: &AccessPolicy,
) -> Access {
    let placement = match (&policy.quarantine, quarantined) {
        (QuarantineAccess::Vlan(vlan), true) => Placement {
            vlan: Some(vlan.clone()),
            filter_id: None,
        },
        _ => policy.placement(record),
    };
    Access::Granted {
        device: record.id.clone(),
        placement,
        passphrase,
        quarantined,
    }
}

fn refused(device: Option<&DeviceId>, reason: String) -> Access {
    Access::Refused {
        device: device.cloned(),
        reason,
    }
}

/// Whether two hex certificate serials name the same number (case and leading zeros aside:
/// RADIUS servers print the serial's bytes, we keep them as DER has them).
fn same_serial(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim_start_matches('0').to_ascii_lowercase();
    !a.is_empty() && norm(a) == norm(b)
}

/// A MAC address in its one form here (`aabbccddeeff`), from the forms access points and
/// devices write (`AA-BB-CC-DD-EE-FF`, `aa:bb:cc:dd:ee:ff`, `aabb.ccdd.eeff`, bare hex).
pub fn normalize_mac(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The MAC address `record`'s device reported, normalised.
pub fn reported_mac(record: &DeviceRecord) -> Option<String> {
    record.hardware.get(MAC_FACT).and_then(|m| normalize_mac(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::MakerId;
    use crate::core::record::{CertStatus, IssuedCert};

    fn record(state: DeviceState) -> DeviceRecord {
        let id = DeviceId::new(MakerId::of_spki(b"k"), "SN-1").unwrap();
        let mut r = DeviceRecord::expected(id, vec![1], None, 1);
        r.state = state;
        r.mud_url = Some("https://maker.example/mud/sensor.json".into());
        r.class_id = Some("sensor".into());
        r.hardware
            .insert(MAC_FACT.into(), "02:00:00:AA:BB:01".into());
        r.network = Some(NetworkProfile::Wifi {
            ssid: "iot".into(),
            psk: "passphrase-of-sn-1".into(),
        });
        r.certificates = vec![
            cert("0a01", CertStatus::Superseded { at: 100 }),
            cert("0a02", CertStatus::Active),
        ];
        r
    }

    fn cert(serial: &str, status: CertStatus) -> IssuedCert {
        IssuedCert {
            serial: serial.into(),
            der: vec![],
            public_key: vec![],
            issuer: vec![],
            issued_at: 1,
            not_after: 10_000,
            status,
        }
    }

    fn policy() -> AccessPolicy {
        AccessPolicy {
            rules: vec![
                PlacementRule {
                    mud_url: Some("https://maker.example/mud/camera.json".into()),
                    class: None,
                    placement: Placement {
                        vlan: Some("30".into()),
                        filter_id: None,
                    },
                },
                PlacementRule {
                    mud_url: Some("https://maker.example/mud/sensor.json".into()),
                    class: Some("sensor".into()),
                    placement: Placement {
                        vlan: Some("20".into()),
                        filter_id: Some("sensors".into()),
                    },
                },
            ],
            default: Placement {
                vlan: Some("10".into()),
                filter_id: None,
            },
            quarantine: QuarantineAccess::Vlan("999".into()),
        }
    }

    fn granted_vlan(access: &Access) -> Option<&str> {
        match access {
            Access::Granted { placement, .. } => placement.vlan.as_deref(),
            Access::Refused { .. } => None,
        }
    }

    #[test]
    fn an_active_device_is_placed_by_the_first_rule_its_mud_url_and_class_match() {
        let r = record(DeviceState::Active);
        let access = by_certificate(&r.id, Some(&r), "0A02", 500, 60, &policy());
        assert_eq!(granted_vlan(&access), Some("20"), "{access:?}");
        let mut other = r.clone();
        other.class_id = Some("camera".into());
        let access = by_certificate(&r.id, Some(&other), "0a02", 500, 60, &policy());
        assert_eq!(granted_vlan(&access), Some("10"), "the default: {access:?}");
    }

    #[test]
    fn a_superseded_certificate_works_through_its_grace_only() {
        let r = record(DeviceState::Active);
        assert!(matches!(
            by_certificate(&r.id, Some(&r), "0a01", 150, 60, &policy()),
            Access::Granted { .. }
        ));
        assert!(matches!(
            by_certificate(&r.id, Some(&r), "0a01", 160, 60, &policy()),
            Access::Refused { .. }
        ));
        assert!(matches!(
            by_certificate(&r.id, Some(&r), "0a03", 150, 60, &policy()),
            Access::Refused { .. }
        ));
    }

    #[test]
    fn only_active_devices_get_on_and_quarantine_follows_the_policy() {
        for state in [
            DeviceState::Expected,
            DeviceState::Onboarding,
            DeviceState::Decommissioning,
            DeviceState::Decommissioned,
            DeviceState::DecommissionedUnattested,
        ] {
            let r = record(state);
            assert!(
                matches!(
                    by_certificate(&r.id, Some(&r), "0a02", 500, 60, &policy()),
                    Access::Refused { .. }
                ),
                "{state}"
            );
            assert!(matches!(
                by_mac("020000aabb01", Some(&r), &policy()),
                Access::Refused { .. }
            ));
        }
        let r = record(DeviceState::Quarantined);
        let access = by_certificate(&r.id, Some(&r), "0a02", 500, 60, &policy());
        assert!(matches!(
            access,
            Access::Granted {
                quarantined: true,
                ..
            }
        ));
        assert_eq!(granted_vlan(&access), Some("999"));
        let rejecting = AccessPolicy {
            quarantine: QuarantineAccess::Reject,
            ..policy()
        };
        assert!(matches!(
            by_certificate(&r.id, Some(&r), "0a02", 500, 60, &rejecting),
            Access::Refused { .. }
        ));
    }

    #[test]
    fn mac_authorization_returns_the_devices_own_passphrase() {
        let r = record(DeviceState::Active);
        let mac = normalize_mac("02-00-00-aa-bb-01").unwrap();
        match by_mac(&mac, Some(&r), &policy()) {
            Access::Granted { passphrase, .. } => {
                assert_eq!(passphrase.as_deref(), Some("passphrase-of-sn-1"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            by_mac("020000aabb02", Some(&r), &policy()),
            Access::Refused { .. }
        ));
        let mut eap = r.clone();
        eap.network = Some(NetworkProfile::EapTls {
            ssid: "iot".into(),
            identity: "SN-1".into(),
            ca_chain: vec![],
        });
        assert!(matches!(
            by_mac(&mac, Some(&eap), &policy()),
            Access::Refused { .. }
        ));
    }

    #[test]
    fn mac_addresses_are_read_in_the_usual_forms() {
        for text in [
            "AA-BB-CC-DD-EE-FF",
            "aa:bb:cc:dd:ee:ff",
            "aabb.ccdd.eeff",
            "AABBCCDDEEFF",
        ] {
            assert_eq!(normalize_mac(text).as_deref(), Some("aabbccddeeff"));
        }
        for text in [
            "",
            "aa:bb:cc:dd:ee",
            "gg:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:ff:00",
        ] {
            assert_eq!(normalize_mac(text), None, "{text}");
        }
    }
}
