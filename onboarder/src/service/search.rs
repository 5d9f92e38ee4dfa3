//! Searches over the fleet that walk the device index (see [`crate::core::query`]) instead of
//! reading every record.

use super::OperatorError;
use crate::core::query::DeviceQuery;
use crate::core::{DeviceId, DeviceRecord};
use crate::store::Store;

/// Index entries read per step of a walk.
const STEP: usize = 1000;
/// Records one page of a search reads at most.
pub const SCAN_BUDGET: usize = 1_000;

/// One page of a search.
#[derive(Debug, Default)]
pub struct SearchPage {
    /// The devices found, in the order of the walk.
    pub devices: Vec<DeviceRecord>,
    /// Where the next page starts, if the walk is not over.
    pub next: Option<String>,
    /// Records read for this page.
    pub scanned: usize,
}

/// One page of the devices `query` matches, walking the device index from `after` (the
/// `next` of the page before). The walk follows the query's rarest term (serial prefix
/// first, then the equality term with the smallest tally, then certificate expiry, else
/// every device by serial) and reads only the records it meets; it stops at `limit`
/// matches or after [`SCAN_BUDGET`] records, so a page costs the same whatever the
/// fleet's size, and a page cut short by the budget says where to go on.
pub fn search(
    store: &dyn Store,
    query: &DeviceQuery,
    after: Option<&str>,
    limit: usize,
) -> Result<SearchPage, OperatorError> {
    query
        .validate()
        .map_err(|e| OperatorError::BadInput(e.to_string()))?;
    let (prefix, upper) = walk(store, query, after)?;
    let mut page = SearchPage::default();
    let mut cursor = after.map(str::to_string);
    // Each step reads twice as many entries as the last (from what the page still needs), so
    // a selective walk takes a few round trips, not one per handful of records.
    let mut step = limit.clamp(16, STEP);
    loop {
        let want = step.min(SCAN_BUDGET - page.scanned);
        step = (step * 2).min(STEP);
        let entries = store.index(&prefix, cursor.as_deref(), want)?;
        let exhausted = entries.len() < want;
        let ids: Vec<DeviceId> = entries.iter().map(|(_, id)| id.clone()).collect();
        let records = store.devices_by_id(&ids)?;
        for ((key, _), record) in entries.into_iter().zip(records) {
            if upper.as_ref().is_some_and(|u| key >= *u) {
                return Ok(page);
            }
            page.scanned += 1;
            cursor = Some(key);
            if let Some(record) = record.filter(|r| query.matches(r)) {
                page.devices.push(record);
            }
            if page.devices.len() >= limit || page.scanned >= SCAN_BUDGET {
                page.next = cursor;
                return Ok(page);
            }
        }
        if exhausted {
            return Ok(page);
        }
    }
}

/// The index range a search walks, and where it ends (exclusive).
fn walk(
    store: &dyn Store,
    query: &DeviceQuery,
    after: Option<&str>,
) -> Result<(String, Option<String>), OperatorError> {
    let upper = query.expires_before.map(crate::core::query::expiry_key);
    let mut walks: Vec<(String, Option<String>)> = Vec::new();
    if let Some(serial) = &query.serial {
        walks.push((crate::core::query::term("serial", serial), None));
    }
    let mut terms = query.terms();
    let tallies = if query.serial.is_none() && !terms.is_empty() {
        store.tallies()?
    } else {
        Default::default()
    };
    terms.sort_by_key(|t| tallies.get(t).copied().unwrap_or(0));
    walks.extend(terms.into_iter().map(|t| (format!("{t}/"), None)));
    if upper.is_some() {
        walks.push((crate::core::query::EXPIRY.to_string(), upper));
    }
    walks.push((crate::core::query::SERIAL.to_string(), None));
    match after {
        None => Ok(walks.swap_remove(0)),
        // A later page goes on along the walk it started on, even if the tallies moved.
        Some(after) => walks
            .into_iter()
            .find(|(prefix, _)| after.starts_with(prefix.as_str()))
            .ok_or_else(|| OperatorError::BadInput("this cursor belongs to another search".into())),
    }
}

impl super::Service {
    /// Every device `query` matches that `keep` keeps, in id order, reading the index page by
    /// page.
    pub(crate) fn matching(
        &self,
        query: &DeviceQuery,
        keep: impl Fn(&DeviceRecord) -> bool,
    ) -> Result<Vec<DeviceId>, OperatorError> {
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.search(query, after.as_deref(), 1_000)?;
            ids.extend(
                page.devices
                    .iter()
                    .filter(|r| keep(r))
                    .map(|r| r.id.clone()),
            );
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        ids.sort();
        Ok(ids)
    }
}
