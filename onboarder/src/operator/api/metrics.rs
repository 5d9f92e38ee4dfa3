//! `/metrics`: the onboarder in Prometheus's text format, for monitoring (the same counters as
//! `/v1/stats` and more: latencies, store commits, CRL age, campaign progress). Every value is
//! read from counters or tallies, never by reading every device record.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::Api;
use crate::control::Control;
use crate::core::campaign::CampaignState;
use crate::metrics::Exposition;
use crate::service::OperatorError;

/// Counters, latencies and gauges in Prometheus's text format.
#[utoipa::path(get, path = "/metrics", tag = "fleet", responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"), super::Problems))]
pub(super) async fn metrics(State(api): State<Api>) -> Result<Response, OperatorError> {
    let control = api.control.clone();
    // Tallies and campaigns are store reads.
    let text = tokio::task::spawn_blocking(move || render(&control))
        .await
        .map_err(|e| OperatorError::Internal(e.to_string()))??;
    Ok(([(header::CONTENT_TYPE, Exposition::CONTENT_TYPE)], text).into_response())
}

fn render(control: &Control) -> Result<String, OperatorError> {
    let service = &control.service;
    let mut out = Exposition::default();
    service.metrics().render(&mut out);

    out.family(
        "onboarder_sessions",
        "gauge",
        "Devices with an operational session open on this replica.",
    );
    out.sample("onboarder_sessions", &[], control.sessions.len() as f64);
    out.family(
        "onboarder_leader",
        "gauge",
        "1 when this replica runs the work that runs once (campaigns, CRLs, rollovers).",
    );
    out.sample(
        "onboarder_leader",
        &[],
        f64::from(u8::from(control.is_leader())),
    );

    let tallies = service.store().tallies()?;
    out.family("onboarder_devices", "gauge", "Devices per lifecycle state.");
    for (name, n) in &tallies {
        if let Some(state) = name.strip_prefix("state/") {
            out.sample("onboarder_devices", &[("state", state)], *n as f64);
        }
    }
    out.family(
        "onboarder_certificates",
        "gauge",
        "Operational certificates (LDevIDs) on record, per status.",
    );
    for (name, n) in &tallies {
        if let Some(status) = name.strip_prefix("certificates/") {
            out.sample("onboarder_certificates", &[("status", status)], *n as f64);
        }
    }

    let commits = service.store().commits();
    out.family(
        "onboarder_store_group_size",
        "histogram",
        "Changes made durable together in one store commit (group commit).",
    );
    out.histogram("onboarder_store_group_size", &[], &commits.sizes.snapshot());
    out.family(
        "onboarder_store_commit_seconds",
        "histogram",
        "Time of one group commit, from taking the group to answering its committers.",
    );
    out.histogram(
        "onboarder_store_commit_seconds",
        &[],
        &commits.seconds.snapshot(),
    );

    let now = service.now();
    let crls = control.crls();
    type CrlValue = fn(&crate::service::Crl, u64) -> f64;
    let per_crl: [(&str, &str, CrlValue); 2] = [
        (
            "onboarder_crl_age_seconds",
            "Seconds since the CRL of each issuing CA generation was issued (thisUpdate).",
            |crl, now| now.saturating_sub(crl.this_update) as f64,
        ),
        (
            "onboarder_crl_entries",
            "Certificates listed by the CRL of each issuing CA generation.",
            |crl, _| crl.entries as f64,
        ),
    ];
    for (name, help, value) in per_crl {
        out.family(name, "gauge", help);
        for crl in &crls {
            let generation = crl.generation.to_string();
            out.sample(name, &[("generation", &generation)], value(crl, now));
        }
    }

    out.family(
        "onboarder_campaign_devices",
        "gauge",
        "Devices of each running campaign, by where their update stands.",
    );
    for campaign in service.campaigns()? {
        if campaign.state != CampaignState::Running {
            continue;
        }
        let status = service.campaign_status(&campaign.id, false)?;
        let t = &status.total;
        for (state, n) in [
            ("waiting", t.waiting),
            ("in_progress", t.in_progress),
            ("healthy", t.healthy),
            ("failed", t.failed),
            ("skipped", t.skipped),
        ] {
            out.sample(
                "onboarder_campaign_devices",
                &[("campaign", &campaign.id), ("state", state)],
                n as f64,
            );
        }
    }
    Ok(out.finish())
}
