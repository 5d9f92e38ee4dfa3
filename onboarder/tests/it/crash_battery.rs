//! The crash battery: the server killed (SIGKILL) at random moments in every phase that changes
//! many devices (a rotation of 1,000 devices, a firmware campaign, a CA rollover, revocations
//! and their CRLs, a batch decommissioning), restarted each time on the same data directory.
//! After every restart the safety invariants hold at once, and once the orders have run their
//! course every invariant holds (`onboarder::exercise::invariants`, the one checker).
//!
//! `ONBOARDER_CRASH_KILLS` sets the kills per phase (20 by default; the long mode in the
//! README runs 200), `ONBOARDER_CRASH_SEED` replays a run (each run prints its seed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certs::factory::FirmwareRelease;
use onboarder::core::DeviceState;
use onboarder::exercise::invariants::{self, Expected};
use onboarder::operator::client::ApiClient;

use crate::crash::{serve, wait_ready};
use crate::harness::*;
use crate::rollover_kill::{Fleet, api, fleet, fleet_on};

fn kills() -> usize {
    std::env::var("ONBOARDER_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(20)
}

/// A small random generator (xorshift), seeded so that a run can be replayed.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        let seed = std::env::var("ONBOARDER_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| now() ^ u64::from(std::process::id()) << 20);
        eprintln!("crash battery seed {seed} (ONBOARDER_CRASH_SEED={seed} replays it)");
        Dice(seed | 1)
    }

    /// A number in 0..n.
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Kills the server `kills()` times at random moments, each within `window` of its start, and
/// restarts it; after each restart the safety invariants must hold. `progress` says how far
/// the phase got (printed at each kill, to show where the kills landed). Returns the kills.
async fn kill_randomly(
    fleet: &mut Fleet,
    dice: &mut Dice,
    phase: &str,
    window: Duration,
    expected: &Expected,
    progress: impl Fn(&ApiClient) -> String + Send + Sync + 'static,
) -> usize {
    let progress = Arc::new(progress);
    let mut landed = Vec::new();
    for kill in 0..kills() {
        let wait = Duration::from_millis(dice.below(window.as_millis() as u64));
        tokio::time::sleep(wait).await;
        let at = {
            let progress = progress.clone();
            api(&fleet.client, move |c| progress(c)).await
        };
        fleet.child.kill().unwrap(); // SIGKILL
        fleet.child.wait().unwrap();
        fleet.child = serve(&fleet.data);
        api(&fleet.client, wait_ready).await;
        let expected = expected.clone();
        let violations = api(&fleet.client, move |c| invariants::safety(c, &expected)).await;
        assert!(
            violations.is_empty(),
            "{phase}: after kill {kill} ({at}): {violations:?}"
        );
        landed.push(format!("{}ms:{at}", wait.as_millis()));
    }
    eprintln!(
        "{phase}: {} kills, 0 violations; at: {}",
        landed.len(),
        landed.join(" ")
    );
    landed.len()
}

/// `kills()` rounds of one order each: `order(api, round)` is given (and acknowledged), the
/// server is killed at a random moment within `window` of it and restarted; the safety
/// invariants hold at once, and every invariant once the order ran its course (`implies`
/// says what it implies).
async fn kill_in_rounds(
    fleet: &mut Fleet,
    dice: &mut Dice,
    phase: &str,
    window: Duration,
    expected: &mut Expected,
    order: impl Fn(&ApiClient, usize) + Send + Sync + 'static,
    mut implies: impl FnMut(&mut Expected, usize, u64),
) {
    let order = Arc::new(order);
    let mut landed = Vec::new();
    for round in 0..kills() {
        let at = now();
        let given = {
            let order = order.clone();
            api(&fleet.client, move |c| order(c, round))
        };
        given.await;
        let wait = Duration::from_millis(dice.below(window.as_millis() as u64));
        tokio::time::sleep(wait).await;
        fleet.child.kill().unwrap(); // SIGKILL
        fleet.child.wait().unwrap();
        fleet.child = serve(&fleet.data);
        api(&fleet.client, wait_ready).await;
        let now_expected = expected.clone();
        let violations = api(&fleet.client, move |c| invariants::safety(c, &now_expected)).await;
        assert!(
            violations.is_empty(),
            "{phase}: after kill {round}: {violations:?}"
        );
        implies(expected, round, at);
        settled(fleet, phase, expected, 120).await;
        landed.push(format!("{}ms", wait.as_millis()));
    }
    eprintln!(
        "{phase}: {} kills, 0 violations, each settled; {} after the order",
        landed.len(),
        landed.join(" ")
    );
}

/// Waits until every invariant holds (the orders ran their course), for at most `secs`.
async fn settled(fleet: &Fleet, phase: &str, expected: &Expected, secs: u64) {
    let expected = expected.clone();
    let within = Duration::from_secs(secs);
    let violations = api(&fleet.client, move |c| {
        invariants::until_settled(c, &expected, within)
    })
    .await;
    assert!(
        violations.is_empty(),
        "{phase}: {} violations after {secs} s, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
}

fn all_active(fleet: &Fleet) -> BTreeMap<String, DeviceState> {
    fleet
        .devices
        .iter()
        .map(|d| (d.serial(), DeviceState::Active))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_killed_at_random_moments_of_a_rotation_of_1000_devices() {
    const SIZE: usize = 1000;
    let mut dice = Dice::new();
    let mut fleet = fleet("Battery Rotation", "SN-BR", SIZE).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !api(&fleet.client, |c| fleet_on(c, 1, SIZE)).await {
        assert!(Instant::now() < deadline, "the fleet did not onboard");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Certificates carry whole seconds: the orders come after every onboarding's issue.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut expected = Expected {
        devices: SIZE,
        states: all_active(&fleet),
        ..Expected::default()
    };
    // A round re-keys the next 50 devices: after 20 rounds every device was re-keyed once,
    // each time with the server killed in the middle.
    let serials: Vec<String> = fleet.devices.iter().map(Device::serial).collect();
    let per_round = SIZE / kills().max(1);
    let order = serials.clone();
    kill_in_rounds(
        &mut fleet,
        &mut dice,
        "rotation",
        Duration::from_millis(800),
        &mut expected,
        move |c, round| {
            let devices = order.iter().cycle().skip(round * per_round).take(per_round);
            drop(
                c.rotate(&onboarder::operator::api::RotateRequest {
                    devices: devices.cloned().collect(),
                    all: false,
                    rate: None,
                })
                .unwrap(),
            );
        },
        move |e, round, at| {
            for s in serials
                .iter()
                .cycle()
                .skip(round * per_round)
                .take(per_round)
            {
                e.renewed.insert(s.clone(), at);
            }
        },
    )
    .await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_killed_at_random_moments_of_a_campaign_a_rollover_revocations_and_a_decommissioning()
 {
    const SIZE: usize = 40;
    let mut dice = Dice::new();
    let mut fleet = fleet("Battery Phases", "SN-BP", SIZE).await;
    fleet
        .until("the fleet onboarded", |c| fleet_on(c, 1, SIZE))
        .await;
    let serials: Vec<String> = fleet.devices.iter().map(Device::serial).collect();
    let mut expected = Expected {
        devices: SIZE,
        states: all_active(&fleet),
        ..Expected::default()
    };
    // A firmware campaign, paced so that it lasts through the kills.
    let image = onboarder::exercise::incompressible_image(256 * 1024, 7);
    let manifest = fleet
        .maker
        .sign_firmware(&image, &FirmwareRelease::new("2.0.0", 2), now())
        .unwrap();
    let (vendor, key) = (
        fleet.maker.config.name.clone(),
        fleet.maker.firmware_key().public_pem(),
    );
    let campaign = api(&fleet.client, move |c| {
        c.import_firmware_key(&vendor, &key).unwrap();
        let release = c.upload_release(&manifest, &image, None).unwrap();
        let campaign = c
            .create_campaign(&onboarder::service::CampaignSpec {
                release: release.digest,
                target: onboarder::service::Target::All,
                waves: vec![10, 50, 100],
                failure_threshold: 50,
                rate: Some(2),
                wave_timeout: None,
                over_https: false,
                signed_urls: false,
                ramp: None,
            })
            .unwrap();
        c.order_campaign(
            &campaign.id,
            onboarder::core::campaign::CampaignOrder::Start,
        )
        .unwrap();
        campaign.id
    })
    .await;
    let id = campaign.clone();
    let window = Duration::from_millis(1200);
    kill_randomly(
        &mut fleet,
        &mut dice,
        "campaign",
        window,
        &expected,
        move |c| {
            c.campaign_status(&id, false)
                .map_or("?".into(), |s| format!("{}healthy", s.total.healthy))
        },
    )
    .await;
    for s in &serials {
        expected.firmware.insert(s.clone(), "2.0.0".into());
    }
    settled(&fleet, "campaign", &expected, 180).await;
    let keys = [fleet.maker.firmware_key().public_key()];
    for d in &fleet.devices {
        let violations = invariants::device(&d.state_dir, &d.state_dir.join("firmware"), &keys, 2);
        assert!(violations.is_empty(), "{}: {violations:?}", d.serial());
    }

    // CA rollovers, one a round, each killed while the fleet moves to the new CA.
    kill_in_rounds(
        &mut fleet,
        &mut dice,
        "rollover",
        Duration::from_millis(1000),
        &mut expected,
        |c, _| drop(c.rollover(None).unwrap()),
        |e, round, _| e.generation = Some(round as u32 + 2),
    )
    .await;

    // Revocations, one a round, each killed while its CRL is published.
    let revoked = serials[..SIZE / 2].to_vec();
    let order = revoked.clone();
    kill_in_rounds(
        &mut fleet,
        &mut dice,
        "revocation",
        Duration::from_millis(400),
        &mut expected,
        move |c, round| {
            let serial = &order[round % order.len()];
            drop(c.revoke(serial, certs::crl::Reason::KeyCompromise).unwrap());
        },
        move |e, round, _| {
            let serial = &revoked[round % revoked.len()];
            e.states.insert(serial.clone(), DeviceState::Quarantined);
        },
    )
    .await;

    // Decommissionings, one a round, each killed during the device's wipe and attestation.
    let leaving = serials[SIZE / 2..].to_vec();
    let order = leaving.clone();
    kill_in_rounds(
        &mut fleet,
        &mut dice,
        "decommission",
        Duration::from_millis(600),
        &mut expected,
        move |c, round| {
            let serial = order[round % order.len()].clone();
            drop(
                c.decommission(vec![serial], protocol::attestation::WipeMethod::Clear, None)
                    .unwrap(),
            );
        },
        move |e, round, _| {
            let serial = &leaving[round % leaving.len()];
            e.states.insert(serial.clone(), DeviceState::Decommissioned);
        },
    )
    .await;
    // Each device is back in its factory state, also one whose attestation's answer the
    // kill took: its next connection is refused as revoked, and it knows what that means.
    let gone = &fleet.devices[SIZE / 2..];
    let bare = || {
        gone.iter()
            .all(|d| invariants::wiped(&d.state_dir).is_empty())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !bare() {
        if Instant::now() > deadline {
            let left: Vec<_> = gone
                .iter()
                .map(|d| (d.serial(), invariants::wiped(&d.state_dir)))
                .filter(|(_, v)| !v.is_empty())
                .collect();
            panic!("decommissioned devices not in their factory state: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.stop().await;
}
