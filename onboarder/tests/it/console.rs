//! The operator's console in a real browser: Debian's headless Chromium driven through
//! WebDriver (chromedriver), against a running onboarder with a connected fleet. Screenshots
//! of every page go to `target/screenshots/`.

use serde_json::json;

use crate::browser::Browser;

use crate::firmware::{image, publish, trust_firmware};
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_the_fleet_from_a_browser() {
    let world = World::new().await;
    trust_firmware(&world).await;
    let serials = ["SN-UI-0", "SN-UI-1", "SN-UI-2"];
    world.expect(&serials, 30).await;
    let running: Vec<Running> = serials
        .iter()
        .map(|s| Running::start(world.agent(&world.device(s))))
        .collect();
    eventually(30, "the fleet connected", || {
        world.server.sessions().len() == serials.len()
    })
    .await;
    publish(&world, &image(40_000, 9), "4.0.0", 4).await;
    // Security updates for the fleet's class ended yesterday: the overview flags it.
    world
        .server
        .control()
        .set_support(onboarder::core::support::SupportPeriod {
            class: "sensor-1".into(),
            ends_on: now() - DAY,
            notice_days: 30,
            set_at: 0,
            source: onboarder::core::support::SupportSource::Operator,
        })
        .await
        .unwrap();
    let base = format!("http://{}", world.server.api_addr());
    let token = onboarder::pki::token(&world.data).unwrap();
    let maker = world.id("SN-UI-1").maker.to_string();
    let before = world.audit().len();

    let (forged, campaign_seen) = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            let b = Browser::start();
            // No session: every page sends the browser to the sign-in page.
            for page in ["/ui", "/ui/devices", "/ui/campaigns", "/ui/audit"] {
                b.go(&format!("{base}{page}"));
                assert!(b.url().ends_with("/ui/login"), "{page} -> {}", b.url());
                assert!(b.find("#devices").is_none());
            }
            b.type_in("#token", "not-the-token");
            b.click("#sign-in");
            assert!(b.text("#error").contains("not the admin token"));
            b.type_in("#token", &token);
            b.click("#sign-in");
            b.until_live(10, "the overview", |b| b.url().ends_with("/ui"));
            b.until(10, "the overview's counters", |b| {
                b.text("[data-k=\"states.active\"]") == "3"
            });
            let periods = b.text("#support-periods");
            assert!(
                periods.contains("sensor-1") && periods.contains("UNSUPPORTED"),
                "{periods}"
            );
            b.screenshot("overview");

            // Find a device by serial and open its page.
            b.go(&format!("{base}/ui/devices"));
            b.type_in("#serial", "SN-UI-1");
            b.click("#search");
            b.until_live(10, "the search's result", |b| {
                b.url().contains("serial=SN-UI-1") && b.text("#devices a.device") == "SN-UI-1"
            });
            b.screenshot("devices");
            b.click("#devices a.device");
            assert!(b.text("#facts").contains(&maker));
            assert!(b.text("#certificates").contains("active"));
            let history = b.text("#history");
            for action in ["voucher-accepted", "certificate-issued"] {
                assert!(history.contains(action), "{history}");
            }
            b.screenshot("device");

            // A campaign from the release, started, its progress followed.
            b.go(&format!("{base}/ui/campaigns"));
            b.click("#create-campaign");
            b.until_live(10, "the new campaign's page", |b| {
                b.url().contains("/ui/campaigns/c-")
            });
            let before_start = b.text("#healthy");
            b.click("#campaign-start");
            b.until(60, "every device updated", |b| b.text("#healthy") == "3");
            b.screenshot("campaign");

            // The overview follows the fleet live: a device quarantined through the API
            // leaves the active count without the page being reloaded.
            b.go(&format!("{base}/ui"));
            assert_eq!(b.text("[data-k=\"states.active\"]"), "3");
            let quarantined = ureq::post(format!("{base}/v1/devices/SN-UI-0/quarantine"))
                .header("Authorization", format!("Bearer {token}"))
                .send_json(json!({"reason": "seen live on the overview"}));
            assert!(quarantined.is_ok(), "{quarantined:?}");
            b.until_live(10, "the live count", |b| {
                b.text("[data-k=\"states.active\"]") == "2"
            });

            // Decommission, with its confirmation, and the certificate of sanitization.
            b.go(&format!("{base}/ui/devices/{}", "SN-UI-1"));
            b.click("#decommission");
            assert!(
                b.url().contains("/ui/devices/"),
                "an unticked confirmation is the browser's to refuse"
            );
            b.click("#confirm-decommission");
            b.click("#decommission");
            // The order is on file before the page is reloaded while waiting for the wipe.
            b.until_live(10, "the decommissioning order", |b| {
                b.find("#decommissioning").is_some()
            });
            b.until(60, "the wipe attestation", |b| {
                b.find("#sanitization").is_some()
            });
            b.click("#sanitization");
            b.until_live(10, "the certificate of sanitization", |b| {
                b.text("h1") == "Certificate of Sanitization"
            });
            b.screenshot("sanitization");

            b.go(&format!("{base}/ui/audit"));
            assert!(
                b.text("#chain").contains("verifies"),
                "{}",
                b.text("#chain")
            );
            b.screenshot("audit");
            b.click("#logout");
            b.until_live(10, "the sign-in page", |b| b.url().ends_with("/ui/login"));
            b.go(&format!("{base}/ui/devices"));
            assert!(b.url().ends_with("/ui/login"));

            // A form from elsewhere (no session, or a session without the page's CSRF token)
            // is refused and changes nothing.
            let http: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let forged = http
                .post(format!("{base}/ui/devices/SN-UI-2/decommission"))
                .content_type("application/x-www-form-urlencoded")
                .send("method=clear&confirm=yes")
                .unwrap()
                .status()
                .as_u16();
            (forged, before_start)
        }
    })
    .await
    .unwrap();
    assert_eq!(forged, 403);
    assert_eq!(
        campaign_seen, "0",
        "the campaign's progress changed from 0 to 3"
    );
    assert_eq!(
        world.record("SN-UI-2").unwrap().state,
        onboarder::core::DeviceState::Active
    );
    assert_eq!(
        world.record("SN-UI-0").unwrap().state,
        onboarder::core::DeviceState::Quarantined
    );
    assert_eq!(
        world.record("SN-UI-1").unwrap().state,
        onboarder::core::DeviceState::Decommissioned
    );
    let actions: Vec<String> = world.audit()[before..]
        .iter()
        .map(|e| e.event.action.clone())
        .collect();
    assert!(actions.iter().any(|a| a == "campaign-start"), "{actions:?}");
    assert!(
        actions.iter().any(|a| a.starts_with("decommission")),
        "{actions:?}"
    );
    for r in running {
        r.stop().await;
    }
}

/// The session and CSRF rules, without a browser: the cookie's attributes, forms refused
/// without the page's token, pages that send a stranger to the sign-in page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_strict_and_forms_need_their_csrf_token() {
    let world = World::new().await;
    world.expect(&["SN-UI-S"], 30).await;
    let base = format!("http://{}", world.server.api_addr());
    let token = onboarder::pki::token(&world.data).unwrap();
    let audit_before = world.audit().len();
    tokio::task::spawn_blocking(move || {
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let page = http.get(format!("{base}/ui/devices")).call().unwrap();
        assert_eq!(page.status().as_u16(), 303);
        assert_eq!(page.headers()["location"], "/ui/login");
        let login = http
            .post(format!("{base}/ui/login"))
            .content_type("application/x-www-form-urlencoded")
            .send(format!("token={token}"))
            .unwrap();
        assert_eq!(login.status().as_u16(), 303);
        let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        let session = cookie.split(';').next().unwrap().to_string();
        let page = http
            .get(format!("{base}/ui/devices"))
            .header("Cookie", &session)
            .call()
            .unwrap();
        assert_eq!(page.status().as_u16(), 200);
        let csp = page.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        let html = page.into_body().read_to_string().unwrap();
        let csrf = html
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_string();
        let label = |csrf: &str| {
            http.post(format!("{base}/ui/devices/SN-UI-S/labels"))
                .header("Cookie", &session)
                .content_type("application/x-www-form-urlencoded")
                .send(format!("csrf={csrf}&add_tags=x"))
                .unwrap()
                .status()
                .as_u16()
        };
        assert_eq!(label(""), 403);
        assert_eq!(label(&"0".repeat(64)), 403);
        // A tampered cookie is no session.
        let mut tampered = session.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == '0' { '1' } else { '0' });
        let page = http
            .get(format!("{base}/ui/devices"))
            .header("Cookie", &tampered)
            .call()
            .unwrap();
        assert_eq!(page.status().as_u16(), 303);
        assert_eq!(label(&csrf), 303, "with its token the form goes through");
    })
    .await
    .unwrap();
    let record = world.record("SN-UI-S").unwrap();
    assert_eq!(record.tags.len(), 1);
    let labelled = world.audit()[audit_before..]
        .iter()
        .filter(|e| e.event.action == "labelled")
        .count();
    assert_eq!(labelled, 1, "the refused forms changed nothing");
}
