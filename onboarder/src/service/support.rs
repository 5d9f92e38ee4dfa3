//! Support periods: set by the operator (kept as named values, one per class, and in memory on
//! every replica: each hello asks), and the sweep that opens and closes them in the audit log
//! and finds the devices still to be told.

use std::collections::BTreeMap;

use super::{OperatorError, Pending, Service, Shared};
use crate::audit::AuditEvent;
use crate::core::query::DeviceQuery;
use crate::core::support::{self, SupportPeriod, SupportStatus};
use crate::core::{DeviceId, DeviceState};
use crate::store::{Change, StoreError};

/// Prefix of the named values holding support periods, by class.
pub(crate) const PERIOD: &str = "support/";
/// Prefix of the named values that say a period's notice, or its end, is in the audit log.
const ANNOUNCED: &str = "support-announced/";

/// Support periods by class.
pub(crate) type Periods = BTreeMap<String, SupportPeriod>;

/// Reads every support period from the store.
pub(crate) fn load(store: &dyn crate::store::Store) -> Result<Periods, StoreError> {
    let mut periods = Periods::new();
    for (key, value) in store.meta_prefix(PERIOD)? {
        match serde_json::from_slice::<SupportPeriod>(&value) {
            Ok(p) => {
                periods.insert(p.class.clone(), p);
            }
            Err(e) => tracing::error!("support period {key} is corrupt: {e}"),
        }
    }
    Ok(periods)
}

impl Service {
    /// Sets the support period of a device class (replacing its last one). Its devices are told
    /// once the notice period has begun (see [`Service::support_sweep`]).
    pub async fn set_support(
        &self,
        mut period: SupportPeriod,
    ) -> Result<SupportPeriod, OperatorError> {
        period.set_at = self.now();
        period
            .validate()
            .map_err(|e| OperatorError::BadInput(e.to_string()))?;
        let value =
            serde_json::to_vec(&period).map_err(|e| OperatorError::Internal(e.to_string()))?;
        self.commit(|now| {
            let change = Change {
                meta: vec![(format!("{PERIOD}{}", period.class), value.clone())],
                audit: vec![AuditEvent::operator(
                    None,
                    "support-period-set",
                    format!(
                        "security updates for {} end on {}; devices told {} days ahead",
                        period.class,
                        support::date(period.ends_on),
                        period.notice_days
                    ),
                    now,
                )],
                ..Change::default()
            };
            Ok::<_, OperatorError>(Pending::of(change, ()))
        })
        .await?;
        self.took_support(&period);
        Ok(period)
    }

    /// Keeps `period` (just committed) in memory, and tells the other replicas.
    pub(crate) fn took_support(&self, period: &SupportPeriod) {
        self.support
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(period.class.clone(), period.clone());
        self.tell(Shared::Support);
    }

    /// Every support period, by class.
    pub fn support_periods(&self) -> Periods {
        self.support
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The support period of `class`, if one is set.
    pub fn support_of(&self, class: Option<&str>) -> Option<SupportPeriod> {
        let class = class?;
        self.support
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(class)
            .cloned()
    }

    /// The support status of a device of `class` now.
    pub fn support_status(&self, class: Option<&str>) -> SupportStatus {
        support::status_of(self.support_of(class).as_ref(), self.now())
    }

    /// Reads the support periods again (another replica set one).
    pub(crate) fn reload_support(&self) -> Result<(), StoreError> {
        let periods = load(self.store.as_ref())?;
        *self.support.write().unwrap_or_else(|e| e.into_inner()) = periods;
        Ok(())
    }

    /// For every period whose notice has begun: says so in the audit log once (and once more
    /// when it ends), and returns the active devices of its class still to be told, with the
    /// command that tells them. The class's devices are looked through when an announcement
    /// was just written, or with `all`; in between a device that connects is told by its
    /// welcome, so a sweep does not read a whole class every time.
    pub async fn support_sweep(
        &self,
        all: bool,
    ) -> Result<Vec<(protocol::message::Command, Vec<DeviceId>)>, OperatorError> {
        let now = self.now();
        let mut out = Vec::new();
        for period in self.support_periods().into_values() {
            let status = period.status(now);
            if status == SupportStatus::Supported {
                continue;
            }
            if !self.announce(&period, status).await? && !all {
                continue;
            }
            let query = DeviceQuery {
                class: Some(period.class.clone()),
                state: Some(DeviceState::Active),
                ..DeviceQuery::default()
            };
            let untold = self.matching(&query, |r| period.must_tell(r, now))?;
            if !untold.is_empty() {
                out.push((period.command(), untold));
            }
        }
        Ok(out)
    }

    /// Writes the audit entry of `period` reaching `status` (its notice, or its end), once;
    /// whether it wrote it now.
    async fn announce(
        &self,
        period: &SupportPeriod,
        status: SupportStatus,
    ) -> Result<bool, OperatorError> {
        let (action, detail) = match status {
            SupportStatus::Ending => (
                "support-ending",
                format!(
                    "security updates for {} end on {}: its devices are told",
                    period.class,
                    support::date(period.ends_on)
                ),
            ),
            _ => (
                "support-ended",
                format!(
                    "security updates for {} ended on {}: its devices are unsupported",
                    period.class,
                    support::date(period.ends_on)
                ),
            ),
        };
        let key = format!("{ANNOUNCED}{}/{}/{action}", period.class, period.ends_on);
        if self.store.meta(&key)?.is_some() {
            return Ok(false);
        }
        self.commit(|now| {
            let change = Change {
                meta: vec![(key.clone(), now.to_string().into_bytes())],
                audit: vec![AuditEvent::system(None, action, detail.clone(), now)],
                ..Change::default()
            };
            Ok::<_, OperatorError>(Pending::of(change, true))
        })
        .await
    }
}
