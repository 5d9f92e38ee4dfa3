//! The console's pages and forms. Each reads through the service (or orders through the
//! control plane, as the API does): no rule lives here.

use crate::core::support::SupportStatus;
use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::session::Session;
use super::{Console, UiError, UiResult, html_response, page, see_other, segment, when};
use crate::core::DeviceRecord;
use crate::core::campaign::{CampaignOrder, CampaignState};
use crate::core::query::Labels;
use crate::operator::OperatorError;
use crate::operator::api::SearchParams;
use crate::service::{CampaignSpec, Target};

/// Days ahead the overview counts expiring certificates.
const EXPIRING_DAYS: u64 = 30;
/// Audit entries the device page and the audit page read back, newest first.
const RECENT_AUDIT: usize = 20_000;

/// The overview's counters: every one an O(1) read (tallies, in-memory counters).
#[derive(Debug, serde::Serialize)]
pub(crate) struct Overview {
    states: BTreeMap<String, u64>,
    devices: u64,
    sessions: usize,
    activity: BTreeMap<&'static str, u64>,
    expiring_soon: i64,
    expired: i64,
    certificates: BTreeMap<String, i64>,
    crls: Vec<(u32, u64, usize)>,
    campaigns_running: usize,
    now: u64,
}

fn overview_of(console: &Console) -> Result<Overview, OperatorError> {
    let service = &console.control.service;
    let now = service.now();
    let tallies = service.store().tallies()?;
    let today = now / 86_400;
    let (mut expiring_soon, mut expired) = (0, 0);
    let mut certificates = BTreeMap::new();
    for (name, n) in &tallies {
        if let Some(day) = name
            .strip_prefix(crate::store::EXPIRES_ON)
            .and_then(|d| d.parse::<u64>().ok())
        {
            if day < today {
                expired += n;
            } else if day < today + EXPIRING_DAYS {
                expiring_soon += n;
            }
        } else if let Some(status) = name.strip_prefix("certificates/")
            && *n != 0
        {
            certificates.insert(status.to_string(), *n);
        }
    }
    let states = service.state_counts()?;
    let campaigns_running = service
        .campaigns()?
        .iter()
        .filter(|c| c.state == CampaignState::Running)
        .count();
    Ok(Overview {
        devices: states.values().sum(),
        states,
        sessions: console.control.sessions.len(),
        activity: service.metrics().answered(),
        expiring_soon,
        expired,
        certificates,
        crls: console
            .control
            .crls()
            .iter()
            .map(|c| (c.generation, now.saturating_sub(c.this_update), c.entries))
            .collect(),
        campaigns_running,
        now,
    })
}

pub(crate) async fn overview_json(State(console): State<Console>) -> Result<Response, UiError> {
    Ok(axum::Json(overview_of(&console)?).into_response())
}

pub(crate) async fn overview(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
) -> UiResult {
    let o = overview_of(&console)?;
    let support = support_rows(&console)?;
    let content = html! {
        section class="cards" data-live="/ui/overview.json" {
            div class="card" { span class="big" data-k="devices" { (o.devices) } " devices" }
            div class="card" { span class="big" data-k="sessions" { (o.sessions) } " connected" }
            div class="card" { span class="big" data-k="expiring_soon" { (o.expiring_soon) } " certificates expire within " (EXPIRING_DAYS) " days" }
            div class="card" { span class="big" data-k="expired" { (o.expired) } " live certificates expired" }
            div class="card" { span class="big" data-k="campaigns_running" { (o.campaigns_running) } " campaigns running" }
        }
        h2 { "Devices by state" }
        table id="states" {
            tr { th { "State" } th { "Devices" } }
            @for (state, n) in &o.states {
                tr { td { a href={ "/ui/devices?state=" (state) } { (state) } } td data-k={ "states." (state) } { (n) } }
            }
        }
        h2 { "Activity since start" }
        table id="activity" {
            tr { th { "Operation" } th { "Answered" } }
            @for (op, n) in &o.activity {
                tr { td { (op) } td data-k={ "activity." (op) } { (n) } }
            }
        }
        h2 { "Certificates" }
        table {
            tr { th { "Status" } th { "Certificates" } }
            @for (status, n) in &o.certificates {
                tr { td { (status) } td data-k={ "certificates." (status) } { (n) } }
            }
        }
        @if !support.is_empty() {
            h2 { "Security updates" }
            table id="support-periods" {
                tr { th { "Class" } th { "Ends on" } th { "Status" } th { "Devices" } }
                @for (class, ends_on, status, devices) in &support {
                    tr {
                        td { a href={ "/ui/devices?class=" (class) } { (class) } }
                        td { (ends_on) }
                        td class=(match status { SupportStatus::Unsupported => "bad", SupportStatus::Ending => "warn", _ => "" }) {
                            (match status { SupportStatus::Unsupported => "UNSUPPORTED", SupportStatus::Ending => "ending: devices told", _ => "supported" })
                        }
                        td { (devices) }
                    }
                }
            }
        }
        h2 { "CRLs" }
        table id="crls" {
            tr { th { "CA generation" } th { "Age" } th { "Entries" } }
            @for (generation, age, entries) in &o.crls {
                tr { td { (generation) } td { (age) " s" } td { (entries) } }
            }
        }
        p class="muted" { "Updated live every 2 seconds from O(1) counters." }
    };
    Ok(html_response(page("Overview", &session.csrf, content)))
}

/// Each support period: its class, end day, status now, and how many devices report the class
/// (the index's tally: one read).
fn support_rows(console: &Console) -> Result<Vec<(String, String, SupportStatus, i64)>, UiError> {
    let service = &console.control.service;
    let tallies = service.store().tallies().map_err(OperatorError::from)?;
    let now = service.now();
    Ok(service
        .support_periods()
        .into_values()
        .map(|p| {
            let devices = tallies
                .get(&crate::core::query::term("class", &p.class))
                .copied()
                .unwrap_or(0);
            let day = crate::core::support::date(p.ends_on);
            (p.class.clone(), day, p.status(now), devices)
        })
        .collect())
}

/// The search form's fields: the API's, with expiry in days from now.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeviceFilter {
    #[serde(default)]
    serial: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    class: String,
    #[serde(default)]
    firmware: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    attrs: String,
    #[serde(default)]
    expiring_within_days: String,
    #[serde(default)]
    query: String,
    after: Option<String>,
}

impl DeviceFilter {
    fn params(&self, now: u64) -> Result<SearchParams, OperatorError> {
        let opt = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        let state = opt(&self.state)
            .map(|s| {
                serde_json::from_value(serde_json::Value::String(s.clone()))
                    .map_err(|_| OperatorError::BadInput(format!("no state {s:?}")))
            })
            .transpose()?;
        let days = opt(&self.expiring_within_days)
            .map(|d| {
                d.parse::<u64>()
                    .map_err(|_| OperatorError::BadInput(format!("{d:?} is not a number of days")))
            })
            .transpose()?;
        Ok(SearchParams {
            query: opt(&self.query),
            serial: opt(&self.serial),
            state,
            class: opt(&self.class),
            firmware: opt(&self.firmware),
            tags: opt(&self.tags),
            attrs: opt(&self.attrs),
            expires_before: days.map(|d| now.saturating_add(d.saturating_mul(86_400))),
            after: self.after.clone().filter(|a| !a.is_empty()),
            limit: Some(50),
        })
    }

    /// This filter's URL with `after` as the cursor.
    fn url_after(&self, after: &str) -> String {
        let fields = [
            ("serial", &self.serial),
            ("state", &self.state),
            ("class", &self.class),
            ("firmware", &self.firmware),
            ("tags", &self.tags),
            ("attrs", &self.attrs),
            ("expiring_within_days", &self.expiring_within_days),
            ("query", &self.query),
        ];
        let mut pairs: Vec<(&str, &str)> = fields
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        pairs.push(("after", after));
        format!(
            "/ui/devices?{}",
            serde_urlencoded::to_string(pairs).unwrap_or_default()
        )
    }
}

pub(crate) async fn devices(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Query(filter): Query<DeviceFilter>,
) -> UiResult {
    let service = &console.control.service;
    let params = filter.params(service.now())?;
    let (_, found) = crate::operator::api::run_search(service, &params)?;
    let saved = service.saved_queries()?;
    let content = html! {
        form method="get" action="/ui/devices" class="filters" {
            input name="serial" id="serial" placeholder="serial starts with" value=(filter.serial);
            select name="state" id="state" {
                option value="" { "any state" }
                @for s in crate::core::DeviceState::ALL {
                    @let s = s.to_string();
                    option value=(s) selected[filter.state == s] { (s) }
                }
            }
            input name="class" placeholder="class" value=(filter.class);
            input name="firmware" placeholder="firmware version" value=(filter.firmware);
            input name="tags" placeholder="tags a,b" value=(filter.tags);
            input name="attrs" placeholder="attributes k=v" value=(filter.attrs);
            input name="expiring_within_days" placeholder="expiring within days" value=(filter.expiring_within_days);
            select name="query" {
                option value="" { "no saved query" }
                @for name in saved.keys() { option value=(name) selected[&filter.query == name] { (name) } }
            }
            button id="search" type="submit" { "Search" }
        }
        p class="muted" { (found.devices.len()) " shown, " (found.scanned) " records read" }
        table id="devices" {
            tr { th { "Device" } th { "State" } th { "Class" } th { "Firmware" } th { "Certificate expires" } th { "Tags" } }
            @for d in &found.devices {
                tr {
                    td { a class="device" href={ "/ui/devices/" (segment(&d.id.to_string())) } { (d.id.serial) } br; span class="muted" { (d.id.maker) } }
                    td { (d.state) }
                    td { (d.class_id.as_deref().unwrap_or("")) }
                    td { (d.firmware_version.as_deref().unwrap_or("")) }
                    td { (crate::core::query::expiry(d).map(when).unwrap_or_default()) }
                    td { @for t in &d.tags { span class="tag" { (t) } " " } }
                }
            }
        }
        @if let Some(next) = &found.next {
            p { a id="next" href=(filter.url_after(next)) { "Next page" } }
        }
    };
    Ok(html_response(page("Devices", &session.csrf, content)))
}

/// The device's audit entries among the newest [`RECENT_AUDIT`].
fn history(
    console: &Console,
    record: &DeviceRecord,
) -> Result<Vec<crate::audit::AuditEntry>, OperatorError> {
    let service = &console.control.service;
    let (head, _) = service.store().audit_head()?;
    let from = head.saturating_sub(RECENT_AUDIT as u64) + 1;
    let mut out = Vec::new();
    let mut next = from;
    while next <= head {
        let page = service.audit_entries(next, 4096)?;
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        out.extend(
            page.into_iter()
                .filter(|e| e.event.device.as_ref() == Some(&record.id)),
        );
    }
    Ok(out)
}

pub(crate) async fn device(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
) -> UiResult {
    let service = &console.control.service;
    let id = service.resolve(&name)?;
    let d = service.device(&id)?;
    let view = crate::operator::views::DeviceView::new(&d, service);
    let exposure = service.device_vulnerabilities(&id)?;
    let label_url = service.label_url(&id).ok();
    let entries = history(&console, &d)?;
    let path = format!("/ui/devices/{}", segment(&id.to_string()));
    let csrf = &session.csrf;
    let content = html! {
        table class="facts" id="facts" {
            tr { th { "Maker" } td { (d.id.maker) } }
            tr { th { "Serial" } td { (d.id.serial) } }
            tr { th { "State" } td id="state" { (d.state) } }
            tr { th { "IDevID key" } td { (d.idevid_key.as_ref().map(|k| crate::operator::sha256_hex(k)).map(|h| format!("sha256:{h}")).unwrap_or_else(|| "not pinned yet".into())) } }
            tr { th { "Voucher" } td { (if d.voucher.is_some() { "on file" } else { "none" }) @if let Some(e) = d.voucher_expires_on { ", expires " (when(e)) } } }
            tr { th { "Class" } td { (d.class_id.as_deref().unwrap_or("")) } }
            tr { th { "MUD URL" } td { (d.mud_url.as_deref().unwrap_or("")) } }
            tr { th { "Firmware" } td { (d.firmware_version.as_deref().unwrap_or("")) " (sequence " (d.firmware_sequence) ")" } }
            tr { th { "Firmware job" } td { @if let Some(j) = &d.firmware_job { (j.version) " from campaign " (j.campaign) ": " (j.state.name()) } } }
            tr { th { "Network credential" } td { @if let Some(n) = &view.network { (n.kind) } } }
            tr { th { "Agent" } td { (d.agent_version.as_deref().unwrap_or("")) } }
            tr { th { "Security updates" } td id="support" class=(support_class(&view.support)) { (support_text(&view.support)) } }
            tr { th { "Known vulnerabilities" } td id="vulnerabilities" class=(if exposure.status == "affected" { "bad" } else { "" }) {
                (exposure.status)
                @for e in &exposure.exposures { " · " (e.vulnerability) @if let Some(fix) = &e.fixed_in { " (fixed in " (fix) ")" } }
            } }
            tr { th { "Security events" } td id="security-events" { (d.security.recorded) " in its history" @if d.security.dropped > 0 { ", " (d.security.dropped) " over the rate limit" } @if d.security.lost > 0 { ", " (d.security.lost) " lost before they were sent" } } }
            @if let Some(url) = &label_url { tr { th { "Live label" } td { a id="live-label" href=(url) { (url) } } } }
            tr { th { "Tags" } td { @for t in &d.tags { span class="tag" { (t) } " " } } }
            tr { th { "Attributes" } td { @for (k, v) in &d.attributes { (k) "=" (v) " " } } }
            @if let Some(reason) = &d.quarantine_reason { tr { th { "Quarantined" } td { (reason) } } }
        }
        h2 { "Certificates (LDevID)" }
        table id="certificates" {
            tr { th { "Serial" } th { "Status" } th { "CA generation" } th { "Issued" } th { "Expires" } }
            @for c in &view.certificates {
                tr { td { code { (c.serial) } } td { (c.status.name()) } td { (c.generation.map(|g| g.to_string()).unwrap_or_default()) } td { (when(c.issued_at)) } td { (when(c.not_after)) } }
            }
        }
        @if let Some(order) = &d.decommission {
            h2 { "Decommissioning" }
            table class="facts" id="decommissioning" {
                tr { th { "Ordered" } td { (when(order.requested_at)) ", method " (format!("{:?}", order.method)) } }
                tr { th { "Nonce" } td { code { (hex::encode(&order.nonce)) } } }
                tr { th { "Wipe attestation" } td { @if let Some(at) = order.attested_at { "signed by the device, verified, " (when(at)) } @else if let Some(why) = &order.forced { "none: forced (" (why) ")" } @else { "awaited" } } }
            }
            @if order.attested_at.is_some() || order.forced.is_some() {
                p { a id="sanitization" href={ (path) "/sanitization" } { "Certificate of sanitization" } }
            }
        }
        h2 { "Orders" }
        div class="orders" {
            form method="post" action={ (path) "/rotate" } {
                input type="hidden" name="csrf" value=(csrf);
                button id="rotate" type="submit" { "Rotate its certificate" }
            }
            form method="post" action={ (path) "/revoke" } {
                input type="hidden" name="csrf" value=(csrf);
                select name="reason" { option value="key-compromise" { "key compromise" } option value="cessation-of-operation" { "cessation of operation" } option value="superseded" { "superseded" } }
                label { input type="checkbox" name="confirm" value="yes" required; " confirm" }
                button id="revoke" type="submit" { "Revoke and quarantine" }
            }
            form method="post" action={ (path) "/decommission" } {
                input type="hidden" name="csrf" value=(csrf);
                select name="method" id="method" { option value="clear" { "clear" } option value="purge-cryptographic-erase" { "purge (cryptographic erase)" } }
                label { input type="checkbox" id="confirm-decommission" name="confirm" value="yes" required; " I understand the device will wipe itself" }
                button id="decommission" type="submit" { "Decommission" }
            }
            form method="post" action={ (path) "/labels" } {
                input type="hidden" name="csrf" value=(csrf);
                input name="add_tags" placeholder="add tags a,b";
                input name="remove_tags" placeholder="remove tags";
                input name="set" placeholder="set k=v,k2=v2";
                button id="label" type="submit" { "Label" }
            }
        }
        h2 { "History" }
        table id="history" {
            tr { th { "#" } th { "When" } th { "Who" } th { "What" } th { "Detail" } }
            @for e in entries.iter().rev() {
                tr { td { (e.seq) } td { (when(e.event.at)) } td { (e.event.actor) } td { (e.event.action) } td { (e.event.detail) } }
            }
        }
        p class="muted" { "From the newest " (RECENT_AUDIT) " audit entries; " code { "onboarder audit" } " reads them all." }
    };
    Ok(html_response(page(
        &format!("Device {}", d.id.serial),
        csrf,
        content,
    )))
}

pub(crate) async fn sanitization(
    State(console): State<Console>,
    Path(name): Path<String>,
) -> UiResult {
    let service = &console.control.service;
    let id = service.resolve(&name)?;
    let certificate = service.sanitization_certificate(&id)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        certificate.to_html(),
    )
        .into_response())
}

/// The fields of the device page's forms (each uses some).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeviceForm {
    #[serde(default)]
    confirm: String,
    reason: Option<certs::crl::Reason>,
    method: Option<protocol::attestation::WipeMethod>,
    #[serde(default)]
    add_tags: String,
    #[serde(default)]
    remove_tags: String,
    #[serde(default)]
    set: String,
}

/// What the device page says of its support period.
fn support_text(s: &crate::operator::views::SupportView) -> String {
    use crate::core::support::{SupportStatus, date};
    let ends = s.ends_on.map(date).unwrap_or_default();
    let told = if s.notice_recorded {
        " (the device recorded the notice)"
    } else {
        ""
    };
    match s.status {
        Some(SupportStatus::Supported) => format!("supported until {ends}"),
        Some(SupportStatus::Ending) => format!("ending on {ends}{told}"),
        Some(SupportStatus::Unsupported) => format!("UNSUPPORTED since {ends}{told}"),
        _ => "no support period set for its class".into(),
    }
}

fn support_class(s: &crate::operator::views::SupportView) -> &'static str {
    match s.status {
        Some(crate::core::support::SupportStatus::Unsupported) => "bad",
        Some(crate::core::support::SupportStatus::Ending) => "warn",
        _ => "",
    }
}

fn confirmed(form_value: &str) -> Result<(), UiError> {
    if form_value == "yes" {
        Ok(())
    } else {
        Err(OperatorError::BadInput("confirm the order first (tick the box)".into()).into())
    }
}

pub(crate) async fn device_order(
    State(console): State<Console>,
    Path((name, order)): Path<(String, String)>,
    axum::Form(form): axum::Form<DeviceForm>,
) -> UiResult {
    let control = &console.control;
    let id = control.service.resolve(&name)?;
    match order.as_str() {
        "rotate" => {
            control.rotate(Some(vec![id.clone()]), None).await?;
        }
        "revoke" => {
            confirmed(&form.confirm)?;
            let reason = form.reason.unwrap_or(certs::crl::Reason::Unspecified);
            control.revoke(&id, reason).await?;
        }
        "decommission" => {
            confirmed(&form.confirm)?;
            let method = form
                .method
                .ok_or_else(|| OperatorError::BadInput("choose a wipe method".into()))?;
            let report = control.decommission(vec![id.clone()], method).await?;
            if let Some((_, why)) = report.refused.first() {
                return Err(OperatorError::BadInput(why.clone()).into());
            }
        }
        "labels" => {
            use crate::core::query::{comma_list, name_value};
            let mut labels = Labels {
                add_tags: comma_list(&form.add_tags).collect(),
                remove_tags: comma_list(&form.remove_tags).collect(),
                ..Labels::default()
            };
            for pair in comma_list(&form.set) {
                let (k, v) =
                    name_value(&pair).map_err(|e| OperatorError::BadInput(e.to_string()))?;
                labels.set.insert(k, v);
            }
            control.service.label(&id, &labels).await?;
        }
        other => {
            return Err(OperatorError::NotFound(format!("order {other:?}")).into());
        }
    }
    see_other(&format!("/ui/devices/{}", segment(&id.to_string())))
}

pub(crate) async fn campaigns(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
) -> UiResult {
    let service = &console.control.service;
    let campaigns = service.campaigns()?;
    let releases = service.releases()?;
    let queries = service.saved_queries()?;
    let content = html! {
        table id="campaigns" {
            tr { th { "Campaign" } th { "Release" } th { "State" } th { "Wave" } th { "Devices" } }
            @for c in campaigns.iter().rev() {
                tr {
                    td { a class="campaign" href={ "/ui/campaigns/" (c.id) } { (c.id) } }
                    td { (c.version) }
                    td { (c.state.name()) }
                    td { (c.wave + 1) " of " (c.waves.len()) }
                    td { (c.waves.iter().map(Vec::len).sum::<usize>()) }
                }
            }
        }
        h2 { "New campaign" }
        form method="post" action="/ui/campaigns" id="new-campaign" class="stack" {
            input type="hidden" name="csrf" value=(session.csrf);
            label { "Release " select name="release" id="release" {
                @for r in &releases { option value=(hex::encode(&r.digest)) { (r.version) " (" (r.class_id) ", sequence " (r.sequence) ")" } }
            } }
            label { "Devices " select name="target" id="target" {
                option value="all" { "every active device" }
                @for name in queries.keys() { option value={ "query:" (name) } { "saved query " (name) } }
            } }
            label { "Waves (cumulative %) " input name="waves" value="10,50,100"; }
            label { "Failure threshold % " input name="failure_threshold" value="10"; }
            label { "Offers per second " input name="rate" placeholder="unlimited"; }
            button id="create-campaign" type="submit" { "Create" }
        }
    };
    Ok(html_response(page("Campaigns", &session.csrf, content)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct NewCampaign {
    release: String,
    target: String,
    waves: String,
    failure_threshold: String,
    #[serde(default)]
    rate: String,
}

pub(crate) async fn create_campaign(
    State(console): State<Console>,
    axum::Form(form): axum::Form<NewCampaign>,
) -> UiResult {
    let number = |what: &str, s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| OperatorError::BadInput(format!("{what}: {s:?} is not a number")))
    };
    let waves = crate::core::query::comma_list(&form.waves)
        .map(|w| number("waves", &w).map(|n| n.min(100) as u8))
        .collect::<Result<Vec<u8>, _>>()?;
    let target = match form.target.strip_prefix("query:") {
        Some(name) => Target::Query(name.to_string()),
        None => Target::All,
    };
    let rate = match form.rate.trim() {
        "" => None,
        r => Some(number("rate", r)?.min(u64::from(u32::MAX)) as u32),
    };
    let spec = CampaignSpec {
        release: form.release,
        target,
        waves,
        failure_threshold: number("failure threshold", &form.failure_threshold)?.min(100) as u8,
        rate,
        wave_timeout: None,
        over_https: false,
        signed_urls: false,
        ramp: None,
    };
    let campaign = console.control.service.create_campaign(spec).await?;
    see_other(&format!("/ui/campaigns/{}", campaign.id))
}

pub(crate) async fn campaign(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> UiResult {
    let service = &console.control.service;
    let status = service.campaign_status(&id, false)?;
    let campaign = service.campaign(&id)?;
    let running = status.state == CampaignState::Running;
    let orders: &[CampaignOrder] = match status.state {
        CampaignState::Created => &[CampaignOrder::Start, CampaignOrder::Abort],
        CampaignState::Running => &[CampaignOrder::Pause, CampaignOrder::Abort],
        CampaignState::Paused { .. } => &[CampaignOrder::Resume, CampaignOrder::Abort],
        _ => &[],
    };
    let content = html! {
        @if running { meta http-equiv="refresh" content="2"; }
        table class="facts" {
            tr { th { "Release" } td { (status.version) } }
            tr { th { "State" } td id="campaign-state" { (status.state.name()) @if let CampaignState::Paused { reason } = &status.state { ": " (reason) } } }
            tr { th { "Wave" } td { (status.wave + 1) " of " (status.waves.len()) } }
            tr { th { "Failure threshold" } td { (campaign.failure_threshold) "%" } }
            tr { th { "Rate" } td id="rate" { (rate_text(&campaign)) } }
            @if let Some(q) = &campaign.query { tr { th { "Devices" } td { "saved query " (q.name) " (devices that match later join)" } } }
        }
        table id="waves" {
            tr { th { "Wave" } th { "Devices" } th { "Waiting" } th { "In progress" } th { "Healthy" } th { "Failed" } th { "Skipped" } }
            @for (i, w) in status.waves.iter().enumerate() {
                tr { td { (i + 1) } td { (w.devices) } td { (w.waiting) } td { (w.in_progress) } td { (w.healthy) } td { (w.failed) } td { (w.skipped) } }
            }
            tr class="total" { td { "All" } td { (status.total.devices) } td { (status.total.waiting) } td { (status.total.in_progress) } td id="healthy" { (status.total.healthy) } td id="failed" { (status.total.failed) } td { (status.total.skipped) } }
        }
        div class="orders" {
            @for order in orders {
                form method="post" action={ "/ui/campaigns/" (status.id) "/" (order) } {
                    input type="hidden" name="csrf" value=(session.csrf);
                    button id={ "campaign-" (order) } type="submit" { (order) }
                }
            }
        }
    };
    Ok(html_response(page(
        &format!("Campaign {}", status.id),
        &session.csrf,
        content,
    )))
}

/// The campaign's offer rate as operators read it, with its ramp.
fn rate_text(c: &crate::core::campaign::Campaign) -> String {
    match (c.rate, &c.ramp) {
        (None, _) => "unlimited".into(),
        (Some(r), None) => format!("{r} offers per second"),
        (Some(r), Some(ramp)) => format!(
            "{} offers per second now, ramping x{} up to {r} (steps: {})",
            ramp.current,
            ramp.factor,
            ramp.steps
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(" → ")
        ),
    }
}

pub(crate) async fn order_campaign(
    State(console): State<Console>,
    Path((id, order)): Path<(String, String)>,
) -> UiResult {
    let order: CampaignOrder = order.parse().map_err(OperatorError::from)?;
    console.control.service.order_campaign(&id, order).await?;
    see_other(&format!("/ui/campaigns/{id}"))
}

pub(crate) async fn releases(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
) -> UiResult {
    let releases = console.control.service.releases()?;
    let content = html! {
        table id="releases" {
            tr { th { "Version" } th { "Vendor" } th { "Class" } th { "Sequence" } th { "Size" } th { "SHA-256" } th { "Uploaded" } }
            @for r in &releases {
                tr { td { (r.version) } td { (r.vendor_id) } td { (r.class_id) } td { (r.sequence) } td { (r.size) } td { code { (hex::encode(&r.digest)) } } td { (when(r.uploaded_at)) } }
                tr class="manifest" { td colspan="7" { details { summary { "Manifest" } pre { (manifest_text(&r.manifest)) } } } }
            }
        }
    };
    Ok(html_response(page("Releases", &session.csrf, content)))
}

/// A signed manifest, decoded for people (it was verified when uploaded).
fn manifest_text(bytes: &[u8]) -> String {
    match protocol::manifest::Manifest::parse_unverified(bytes) {
        Ok(m) => format!("{m:#?}"),
        Err(e) => format!("(cannot decode: {e})"),
    }
}

pub(crate) async fn orders(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
) -> UiResult {
    let csrf = &session.csrf;
    let active = console
        .control
        .service
        .state_counts()?
        .get("active")
        .copied()
        .unwrap_or(0);
    let content = html! {
        div class="orders stack" {
            form method="post" action="/ui/orders/rotate-all" {
                input type="hidden" name="csrf" value=(csrf);
                p { "Every active device (" (active) ") re-keys onto the current issuing CA." }
                label { input type="checkbox" name="confirm" value="yes" required; " confirm" }
                button id="rotate-all" type="submit" { "Rotate every device" }
            }
            form method="post" action="/ui/orders/ca-rollover" {
                input type="hidden" name="csrf" value=(csrf);
                p { "A new issuing CA generation; every device re-keys onto it and the old one is retired." }
                label { input type="checkbox" name="confirm" value="yes" required; " confirm" }
                button id="ca-rollover" type="submit" { "Roll the issuing CA over" }
            }
        }
    };
    Ok(html_response(page("Orders", csrf, content)))
}

pub(crate) async fn fleet_order(
    State(console): State<Console>,
    Path(order): Path<String>,
    axum::Form(form): axum::Form<DeviceForm>,
) -> UiResult {
    confirmed(&form.confirm)?;
    match order.as_str() {
        "rotate-all" => {
            console.control.rotate(None, None).await?;
        }
        "ca-rollover" => {
            console.control.rollover(None).await?;
        }
        other => return Err(OperatorError::NotFound(format!("order {other:?}")).into()),
    }
    see_other("/ui")
}

pub(crate) async fn audit(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
) -> UiResult {
    let service = &console.control.service;
    let chain = service.verify_audit();
    let (head, _) = service.store().audit_head().map_err(OperatorError::from)?;
    let entries = service.audit_entries(head.saturating_sub(99).max(1), 100)?;
    let content = html! {
        @match &chain {
            Ok(summary) => p class="ok" id="chain" { "The hash chain verifies: " (summary.entries) " entries, head " code { (summary.head) } },
            Err(e) => p class="error" id="chain" { "The hash chain does NOT verify: " (e) },
        }
        table id="audit" {
            tr { th { "#" } th { "When" } th { "Who" } th { "Device" } th { "What" } th { "Detail" } }
            @for e in entries.iter().rev() {
                tr { td { (e.seq) } td { (when(e.event.at)) } td { (e.event.actor) } td { (e.event.device.as_ref().map(|d| d.to_string()).unwrap_or_default()) } td { (e.event.action) } td { (e.event.detail) } }
            }
        }
    };
    Ok(html_response(page("Audit log", &session.csrf, content)))
}
