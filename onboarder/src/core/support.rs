//! Support periods (NIST IR 8259 Rev. 1, end of life): the date after which a device class gets
//! no more security updates, told ahead to the devices of the class and to their operators.
//!
//! A period belongs to a device class as devices report it and firmware manifests name it. The
//! operator sets it; a device is told once the notice period has begun (a
//! [`Command::SupportNotice`] in its welcome, or pushed), and its record keeps which end date
//! it confirmed having recorded, so it is not told again.

use protocol::message::Command;
use serde::{Deserialize, Serialize};

use super::error::LifecycleError;
use super::peer::{CredentialKind, DevicePeer};
use super::record::DeviceRecord;
use super::{Decision, DeviceState};
use crate::audit::AuditEvent;

/// Seconds in a day.
const DAY: u64 = 86_400;
/// Longest notice period accepted, in days (ten years).
pub const MAX_NOTICE_DAYS: u32 = 3_650;

/// When security updates for a device class end, and how long ahead devices are told.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupportPeriod {
    /// The device class (model), as devices report it.
    pub class: String,
    /// The last day of security updates ends at this time (seconds since the epoch).
    pub ends_on: u64,
    /// Days before `ends_on` that devices and operators are told.
    pub notice_days: u32,
    /// When it was set.
    pub set_at: u64,
    /// Who said: the operator, or the manufacturer in a signed firmware manifest (the
    /// operator's word replaces the manufacturer's, never the other way round).
    #[serde(default)]
    pub source: SupportSource,
}

/// Who set a support period.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SupportSource {
    /// The owner's operator.
    #[default]
    Operator,
    /// The manufacturer, in the signed manifest of a release of the class.
    Manufacturer,
}

/// Notice given for a period the manufacturer set, in days.
pub const MANUFACTURER_NOTICE_DAYS: u32 = 90;

/// The period a release's signed manifest sets for its class, if it says one and nothing the
/// operator set stands in its way (the manufacturer's latest word replaces its earlier one).
pub fn from_manifest(
    manifest: &protocol::manifest::Manifest,
    current: Option<&SupportPeriod>,
    now: u64,
) -> Option<SupportPeriod> {
    let ends_on = manifest.support_ends_on?;
    match current {
        Some(p) if p.source == SupportSource::Operator || p.ends_on == ends_on => None,
        _ => Some(SupportPeriod {
            class: manifest.class_id.clone(),
            ends_on,
            notice_days: MANUFACTURER_NOTICE_DAYS,
            set_at: now,
            source: SupportSource::Manufacturer,
        }),
    }
}

/// Where a device stands against its class's support period.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SupportStatus {
    /// No support period is known for its class.
    Unknown,
    /// Supported, and the notice period has not begun.
    Supported,
    /// Still supported, and the end is near: within the notice period.
    Ending,
    /// Security updates have ended.
    Unsupported,
}

impl SupportPeriod {
    /// Refuses a period without a class or with an absurd notice.
    pub fn validate(&self) -> Result<(), LifecycleError> {
        super::query::label_ok(&self.class)?;
        if self.notice_days > MAX_NOTICE_DAYS {
            return Err(LifecycleError::BadRequest(format!(
                "a notice of {} days; at most {MAX_NOTICE_DAYS}",
                self.notice_days
            )));
        }
        Ok(())
    }

    /// When devices and operators are told.
    pub fn notice_from(&self) -> u64 {
        self.ends_on
            .saturating_sub(u64::from(self.notice_days) * DAY)
    }

    /// The status at `now`.
    pub fn status(&self, now: u64) -> SupportStatus {
        if now >= self.ends_on {
            SupportStatus::Unsupported
        } else if now >= self.notice_from() {
            SupportStatus::Ending
        } else {
            SupportStatus::Supported
        }
    }

    /// Whether the device of `record` must be told now: the notice period has begun, and it
    /// has not confirmed recording this end date.
    pub fn must_tell(&self, record: &DeviceRecord, now: u64) -> bool {
        now >= self.notice_from()
            && record.class_id.as_deref() == Some(self.class.as_str())
            && record.support_notice != Some(self.ends_on)
            && record.state == DeviceState::Active
    }

    /// The command that tells a device.
    pub fn command(&self) -> Command {
        Command::SupportNotice {
            class_id: self.class.clone(),
            ends_on: self.ends_on,
        }
    }
}

/// The status of a device of `class` at `now`, given the period of its class if there is one.
pub fn status_of(period: Option<&SupportPeriod>, now: u64) -> SupportStatus {
    period.map_or(SupportStatus::Unknown, |p| p.status(now))
}

/// A device says it recorded the notice that support ends on `ends_on`. Recorded once (the
/// audit log says when); a confirmation of an end date that is not its class's is refused.
pub fn recorded(
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    period: Option<&SupportPeriod>,
    ends_on: u64,
    now: u64,
) -> Result<Decision, LifecycleError> {
    peer.require(CredentialKind::Ldevid, "confirming a support notice")?;
    let mut record = record.ok_or_else(|| LifecycleError::UnknownDevice(peer.id.clone()))?;
    record.require_state(&[DeviceState::Active], "confirming a support notice")?;
    let current = period
        .filter(|p| record.class_id.as_deref() == Some(p.class.as_str()))
        .map(|p| p.ends_on);
    if current != Some(ends_on) {
        return Err(LifecycleError::BadRequest(format!(
            "no support notice with end date {ends_on} was sent to this device"
        )));
    }
    if record.support_notice == Some(ends_on) {
        return Ok(Decision::reply(protocol::message::Response::Ack));
    }
    record.support_notice = Some(ends_on);
    record.updated_at = now;
    let event = AuditEvent::device(
        &peer.id,
        "support-notice-recorded",
        format!(
            "the device recorded that security updates for {} end on {}",
            record.class_id.as_deref().unwrap_or("its class"),
            crate::core::support::date(ends_on)
        ),
        now,
    );
    Ok(Decision::ack(record, vec![event]))
}

/// A date as `YYYY-MM-DD` (UTC).
pub fn date(at: u64) -> String {
    let days = (at / DAY) as i64;
    // Civil-from-days (Howard Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The start (00:00 UTC) of the day `YYYY-MM-DD`, in seconds since the epoch; `None` for
/// anything else or a day before 1970.
pub fn parse_date(text: &str) -> Option<u64> {
    let mut parts = text.trim().splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    // Days-from-civil (Howard Hinnant's algorithm), proleptic Gregorian.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let at = u64::try_from(days).ok()? * DAY;
    // 2027-02-31 is not a day: it must read back as itself.
    (date(at) == text.trim()).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn period(ends_on: u64, notice_days: u32) -> SupportPeriod {
        SupportPeriod {
            class: "sensor-1".into(),
            ends_on,
            notice_days,
            set_at: 0,
            source: SupportSource::Operator,
        }
    }

    #[test]
    fn the_status_moves_from_supported_to_ending_to_unsupported() {
        let p = period(100 * DAY, 30);
        assert_eq!(p.status(0), SupportStatus::Supported);
        assert_eq!(p.status(70 * DAY - 1), SupportStatus::Supported);
        assert_eq!(p.status(70 * DAY), SupportStatus::Ending);
        assert_eq!(p.status(100 * DAY), SupportStatus::Unsupported);
        assert_eq!(status_of(None, 0), SupportStatus::Unknown);
    }

    #[test]
    fn dates_read_as_calendar_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_796_169_600), "2026-12-02");
        assert_eq!(date(951_782_400), "2000-02-29");
        for day in ["1970-01-01", "2000-02-29", "2026-12-02", "2099-12-31"] {
            assert_eq!(parse_date(day).map(date).as_deref(), Some(day));
        }
        for not_a_day in ["2027-02-31", "2027-13-01", "27-1-1x", "", "1969-12-31"] {
            assert_eq!(parse_date(not_a_day), None, "{not_a_day}");
        }
    }

    #[test]
    fn the_manufacturers_signed_date_sets_a_period_the_operator_can_override() {
        let mut manifest = protocol::manifest::Manifest::for_image(b"img")
            .build("acme", "sensor-1", 1, "1.0.0", 0);
        assert_eq!(from_manifest(&manifest, None, 5), None);
        manifest.support_ends_on = Some(100 * DAY);
        let set = from_manifest(&manifest, None, 5).unwrap();
        assert_eq!(
            (set.source, set.ends_on, set.notice_days),
            (
                SupportSource::Manufacturer,
                100 * DAY,
                MANUFACTURER_NOTICE_DAYS
            )
        );
        // The same date again changes nothing; a later word of the manufacturer replaces it.
        assert_eq!(from_manifest(&manifest, Some(&set), 6), None);
        manifest.support_ends_on = Some(200 * DAY);
        assert_eq!(
            from_manifest(&manifest, Some(&set), 6).unwrap().ends_on,
            200 * DAY
        );
        // The operator's word stands.
        let operator = period(50 * DAY, 30);
        assert_eq!(from_manifest(&manifest, Some(&operator), 6), None);
    }

    #[test]
    fn an_absurd_notice_or_an_empty_class_is_refused() {
        assert!(period(1, MAX_NOTICE_DAYS + 1).validate().is_err());
        let mut p = period(1, 1);
        p.class.clear();
        assert!(p.validate().is_err());
        assert!(period(1, 30).validate().is_ok());
    }
}
