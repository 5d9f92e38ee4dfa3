//! A wrong clock. A device whose clock is years off onboards with a nonced voucher (see
//! `onboarding::a_device_with_a_wrong_clock_onboards_with_a_nonced_voucher_and_takes_its_time`);
//! here, a whole fleet's clock jumps forward at once (NTP corrects it after a long outage, or
//! a gateway's clock is set): every certificate is due, and the renewals are spread over the
//! next hour instead of arriving in one storm.

use std::sync::atomic::Ordering;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_jump_spreads_the_fleets_renewals_over_an_hour() {
    const FLEET: usize = 60;
    const LIFETIME: u64 = 30 * DAY;
    const STEP: u64 = 300;
    let world = World::with_config(|c| {
        c.policy.ldevid_lifetime = LIFETIME;
        c.policy.superseded_grace = 60;
    })
    .await;
    let serials: Vec<String> = (0..FLEET).map(|i| format!("SN-JUMP-{i:03}")).collect();
    let refs: Vec<&str> = serials.iter().map(String::as_str).collect();
    world.expect(&refs, 60).await;
    let running: Vec<Running> = serials
        .iter()
        .map(|s| Running::start(world.agent(&world.device(s))))
        .collect();
    eventually(60, "the fleet connected", || {
        world.server.sessions().len() == FLEET
    })
    .await;
    let renewed = || {
        running
            .iter()
            .filter(|r| r.agent.stats().renewals.load(Ordering::Relaxed) >= 1)
            .count()
    };

    // Five sixths of the lifetime at once: every renewal is due, and late.
    world.advance_clock(LIFETIME * 5 / 6);
    // What renewed right away, before the clock moves on.
    settle(&running, &renewed).await;
    let at_once = renewed();
    // Then the hour after the jump, five minutes at a time.
    let mut per_step = Vec::new();
    let mut before = at_once;
    for _ in 0..(3600 / STEP + 1) {
        world.advance_clock(STEP);
        // The renewals due by now are done once the count holds still and none is half way.
        settle(&running, &renewed).await;
        let done = renewed();
        per_step.push(done - before);
        before = done;
    }
    eprintln!("clock jump: {at_once} of {FLEET} renewed at once, then per 5 minutes: {per_step:?}");
    assert_eq!(renewed(), FLEET, "every device renewed within the hour");
    // Spread: no five minutes (nor the jump's own moment) takes more than a quarter of the
    // fleet; at once, a storm would have taken all of it.
    assert!(at_once <= FLEET / 4, "{at_once} at once");
    assert!(
        per_step.iter().all(|n| *n <= FLEET / 4),
        "renewals per 5 minutes: {per_step:?}"
    );
    for r in running {
        assert_eq!(r.agent.stats().failures.load(Ordering::Relaxed), 0);
        r.stop().await;
    }
}

/// Waits until the renewal count holds still for a second and no renewal is half way.
async fn settle(running: &[Running], renewed: &impl Fn() -> usize) {
    let mut last = usize::MAX;
    loop {
        let now = renewed();
        let midway = running
            .iter()
            .any(|r| r.agent.load_state().unwrap().renewal.is_some());
        if now == last && !midway {
            return;
        }
        last = now;
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    }
}
