//! Who a device is: the manufacturer trust anchor its IDevID chains to, and its serial.
//!
//! Two manufacturers' serials may collide (both factories may count from `SN-000001`), so a
//! serial alone names nothing. Records, vouchers, sessions, certificates, the audit log and
//! every operator command use the pair, written `MAKER/SERIAL`.
//!
//! A [`MakerId`] is derived from the anchor's public key, not chosen by anyone: the first 8
//! bytes of the SHA-256 of its DER SubjectPublicKeyInfo, in hex. A manufacturer that re-issues
//! its root with the same key stays the same maker; anyone can recompute the id with
//! `openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | cut -c1-16`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Length of a maker id in hex characters.
pub const MAKER_ID_LEN: usize = 16;

/// A manufacturer, as the trust anchor its devices' IDevIDs chain to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MakerId(String);

impl MakerId {
    /// The maker id of an anchor whose SubjectPublicKeyInfo (DER, with its outer SEQUENCE) is
    /// `spki_der`.
    pub fn of_spki(spki_der: &[u8]) -> MakerId {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
        MakerId(certs::inspect::hex(&digest.as_ref()[..MAKER_ID_LEN / 2]))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MakerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MakerId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() == MAKER_ID_LEN && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(MakerId(s.to_ascii_lowercase()))
        } else {
            Err(IdError(format!(
                "{s:?} is not a maker id ({MAKER_ID_LEN} hex characters)"
            )))
        }
    }
}

impl TryFrom<String> for MakerId {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<MakerId> for String {
    fn from(m: MakerId) -> String {
        m.0
    }
}

/// A device: its maker and its serial. Ordered by maker, then serial.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId {
    /// The manufacturer anchor its IDevID chains to.
    pub maker: MakerId,
    /// Its serial number (the IDevID's subject serialNumber).
    pub serial: String,
}

impl DeviceId {
    /// The device `serial` of `maker`, if the serial is a valid device serial.
    pub fn new(maker: MakerId, serial: &str) -> Result<DeviceId, IdError> {
        certs::profile::validate_serial(serial).map_err(|e| IdError(e.to_string()))?;
        Ok(DeviceId {
            maker,
            serial: serial.to_string(),
        })
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.maker, self.serial)
    }
}

impl FromStr for DeviceId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let (maker, serial) = s
            .split_once('/')
            .ok_or_else(|| IdError(format!("{s:?} is not a device id (MAKER/SERIAL)")))?;
        DeviceId::new(maker.parse()?, serial)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<DeviceId> for String {
    fn from(d: DeviceId) -> String {
        d.to_string()
    }
}

/// A maker id or device id that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(String);

/// Both are strings in JSON (`MAKER/SERIAL`, the maker's 16 hex digits).
fn string_schema(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(description))
        .into()
}

impl utoipa::PartialSchema for DeviceId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema("A device: its maker id and serial, MAKER/SERIAL")
    }
}

impl utoipa::ToSchema for DeviceId {}

impl utoipa::PartialSchema for MakerId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema("A manufacturer: the first 16 hex digits of its anchor key's SHA-256")
    }
}

impl utoipa::ToSchema for MakerId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_refuse_garbage() {
        let maker = MakerId::of_spki(b"spki");
        assert_eq!(maker.as_str().len(), MAKER_ID_LEN);
        let id = DeviceId::new(maker.clone(), "SN-1").unwrap();
        let text = id.to_string();
        assert_eq!(text.parse::<DeviceId>().unwrap(), id);
        let cbor = protocol::cbor::to_vec(&id);
        assert_eq!(
            protocol::cbor::from_slice::<DeviceId>(&cbor, 100).unwrap(),
            id
        );
        for bad in [
            "SN-1",
            "abc/SN-1",
            &format!("{maker}/"),
            &format!("{maker}/a/b"),
        ] {
            assert!(bad.parse::<DeviceId>().is_err(), "{bad}");
        }
        // Upper-case hex is the same maker.
        let upper = format!("{}/SN-1", maker.as_str().to_uppercase());
        assert_eq!(upper.parse::<DeviceId>().unwrap(), id);
    }
}
