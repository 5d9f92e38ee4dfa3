//! `/metrics`: Prometheus's own checker accepts it, and an onboarding moves the counters it
//! should (and only those).

use std::collections::BTreeMap;
use std::io::Write;

use onboarder::operator::client::ApiClient;

use crate::harness::*;

/// Every sample of an exposition, by its name with labels (`name{a="b"}`).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, name: &str) -> f64 {
    after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
}

/// Runs Debian's `promtool check metrics` on `text` (the test suite's installer provides it).
fn promtool_accepts(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics_and_an_onboarding_moves_the_right_counters() {
    let world = World::new().await;
    world.expect(&["SN-MET"], 30).await;
    let base = format!("http://{}", world.server.api_addr());
    let client = ApiClient::new(&base, onboarder::pki::token(&world.data).unwrap());
    let stranger = ApiClient::new(&base, "not-the-token".into());
    let scrape = |client: ApiClient| async move {
        tokio::task::spawn_blocking(move || client.metrics())
            .await
            .unwrap()
    };
    let before = samples(&scrape(client.clone()).await.unwrap());
    assert!(matches!(
        scrape(stranger).await,
        Err(onboarder::operator::client::ClientError::Refused { status: 401, .. })
    ));

    let device = world.device("SN-MET");
    world.agent(&device).onboard().await.unwrap();
    let text = scrape(client.clone()).await.unwrap();
    promtool_accepts(&text);
    let after = samples(&text);

    let ok = |operation: &str| {
        format!(
            r#"onboarder_requests_total{{operation="{operation}",transport="quic",outcome="ok"}}"#
        )
    };
    // One voucher, one enrolment (the voucher's acceptance with it), the hello that confirms
    // it, and the device now active with one active certificate.
    assert_eq!(moved(&before, &after, &ok("voucher_request")), 1.0);
    assert_eq!(moved(&before, &after, &ok("enroll")), 1.0);
    assert!(moved(&before, &after, &ok("hello")) >= 1.0);
    assert_eq!(moved(&before, &after, &ok("voucher_status")), 0.0);
    assert_eq!(moved(&before, &after, &ok("enroll_status")), 0.0);
    assert_eq!(
        moved(&before, &after, r#"onboarder_devices{state="expected"}"#),
        -1.0
    );
    assert_eq!(
        moved(&before, &after, r#"onboarder_devices{state="active"}"#),
        1.0
    );
    assert_eq!(
        moved(
            &before,
            &after,
            r#"onboarder_certificates{status="active"}"#
        ),
        1.0
    );
    // Each request timed once; the store committed at least those writes.
    let timed = moved(
        &before,
        &after,
        r#"onboarder_request_duration_seconds_count{operation="enroll"}"#,
    );
    assert_eq!(timed, 1.0);
    assert!(moved(&before, &after, "onboarder_store_commit_seconds_count") >= 2.0);
    // Nothing was refused.
    assert!(
        after
            .keys()
            .filter(|k| k.starts_with("onboarder_refusals_total"))
            .all(|k| moved(&before, &after, k) == 0.0)
    );
    assert_eq!(after.get("onboarder_leader"), Some(&1.0));
    world.assert_tallies_agree();
}
