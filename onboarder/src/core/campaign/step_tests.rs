use super::*;
use crate::core::MakerId;

fn campaign(waves: usize) -> Campaign {
    let id = |i: usize| DeviceId::new(MakerId::of_spki(b"m"), &format!("SN-{i}")).unwrap();
    Campaign {
        id: "c-1".into(),
        release: vec![],
        version: "v".into(),
        waves: (0..waves).map(|i| vec![id(i)]).collect(),
        percentages: vec![],
        failure_threshold: 10,
        rate: None,
        wave_timeout: None,
        over_https: false,
        signed_urls: false,
        state: CampaignState::Created,
        wave: 0,
        wave_started_at: 0,
        created_at: 0,
        updated_at: 0,
        query: None,
        ramp: None,
    }
}

#[test]
fn orders_follow_the_campaign_states() {
    let mut c = campaign(2);
    assert!(c.order(CampaignOrder::Pause, 1).is_err(), "not running");
    assert!(c.order(CampaignOrder::Resume, 1).is_err(), "not paused");
    c.order(CampaignOrder::Start, 1).unwrap();
    assert!(c.order(CampaignOrder::Start, 2).is_err());
    c.order(CampaignOrder::Pause, 2).unwrap();
    let event = c.order(CampaignOrder::Resume, 3).unwrap();
    assert_eq!(event.action, "campaign-resume");
    assert_eq!(c.wave_started_at, 3);
    c.order(CampaignOrder::Abort, 4).unwrap();
    assert!(c.order(CampaignOrder::Resume, 5).is_err());
    assert!("restart".parse::<CampaignOrder>().is_err());
    assert_eq!(
        "abort".parse::<CampaignOrder>().unwrap(),
        CampaignOrder::Abort
    );
}

#[test]
fn steps_apply_with_their_checks() {
    let mut c = campaign(2);
    assert!(
        c.apply(&Step::Complete, 1).is_err(),
        "a created campaign takes no step"
    );
    c.order(CampaignOrder::Start, 1).unwrap();
    assert_eq!(c.apply(&Step::Wait, 2).unwrap(), None);
    let e = c
        .apply(&Step::Advance { stragglers: 1 }, 5)
        .unwrap()
        .unwrap();
    assert!(e.detail.contains("timed out"), "{}", e.detail);
    assert_eq!((c.wave, c.wave_started_at), (1, 5));
    assert!(
        c.apply(&Step::Advance { stragglers: 0 }, 6).is_err(),
        "no wave after the last"
    );
    c.apply(&Step::Pause("too many failures".into()), 7)
        .unwrap();
    assert!(matches!(c.state, CampaignState::Paused { .. }));
    c.order(CampaignOrder::Resume, 8).unwrap();
    c.apply(&Step::Complete, 9).unwrap();
    assert_eq!(c.state, CampaignState::Completed);
}

fn tally(devices: usize, waiting: usize, healthy: usize, failed: usize) -> Tally {
    Tally {
        devices,
        waiting,
        in_progress: devices - waiting - healthy - failed,
        healthy,
        failed,
        skipped: 0,
    }
}

#[test]
fn a_ramp_multiplies_on_time_up_to_its_ceiling_and_holds_on_failures() {
    let mut c = campaign(1);
    c.rate = Some(10);
    c.ramp = Some(Ramp {
        current: 2,
        factor: 3,
        every: 5,
        last_step_at: 0,
        steps: vec![2],
    });
    let fine = tally(100, 50, 50, 0);
    assert_eq!(c.ramp_up(&fine, 10), None, "not running");
    c.order(CampaignOrder::Start, 10).unwrap();
    assert_eq!(c.offer_rate(), Some(2));
    assert_eq!(c.ramp_up(&fine, 14), None, "too early");
    let e = c.ramp_up(&fine, 15).unwrap();
    assert_eq!(e.action, "campaign-ramp");
    assert_eq!(c.offer_rate(), Some(6));
    // Failures over the threshold (10%): the rate holds.
    let failing = tally(100, 50, 30, 20);
    assert_eq!(c.ramp_up(&failing, 30), None);
    assert_eq!(c.offer_rate(), Some(6));
    // Capped by the campaign's rate, then no more steps.
    c.ramp_up(&fine, 30).unwrap();
    assert_eq!(c.offer_rate(), Some(10));
    assert_eq!(c.ramp_up(&fine, 60), None);
    assert_eq!(c.ramp.as_ref().unwrap().steps, [2, 6, 10]);
}

#[test]
fn devices_join_a_campaign_on_a_query_only_once_and_it_waits_for_them() {
    let id = |i: usize| DeviceId::new(MakerId::of_spki(b"m"), &format!("SN-{i}")).unwrap();
    let mut fixed = campaign(2);
    assert_eq!(
        fixed.join([id(7)], 1),
        None,
        "a campaign on a list takes no one"
    );
    let mut c = campaign(2);
    c.query = Some(QueryTarget {
        name: "pilots".into(),
        query: Default::default(),
    });
    c.order(CampaignOrder::Start, 1).unwrap();
    let e = c.join([id(0), id(7), id(8), id(7)], 2).unwrap();
    assert!(e.detail.contains("2 devices"), "{}", e.detail);
    assert_eq!(c.waves[1], [id(1), id(7), id(8)]);
    assert_eq!(c.join([id(7)], 3), None);
    // Its last wave over, it waits instead of completing.
    c.wave = 1;
    let over = tally(3, 0, 3, 0);
    assert_eq!(c.next_step(&over, &over, vec![], 4), Step::Wait);
    fixed.order(CampaignOrder::Start, 1).unwrap();
    fixed.wave = 1;
    assert_eq!(fixed.next_step(&over, &over, vec![], 4), Step::Complete);
}

#[test]
fn a_campaign_offers_no_more_than_its_devices_in_progress_allow() {
    let id = |i: usize| DeviceId::new(MakerId::of_spki(b"m"), &format!("SN-{i}")).unwrap();
    let mut c = campaign(1);
    c.order(CampaignOrder::Start, 1).unwrap();
    let unoffered: Vec<DeviceId> = (0..50).map(id).collect();
    let busy = |in_progress: usize| Tally {
        devices: in_progress + 50,
        waiting: 50,
        in_progress,
        ..Tally::default()
    };
    // Room for all.
    assert_eq!(
        c.next_step(&busy(0), &busy(0), unoffered.clone(), 2),
        Step::Offer(unoffered.clone())
    );
    // Room for ten: the first ten.
    let nearly = busy(MAX_IN_PROGRESS - 10);
    assert_eq!(
        c.next_step(&nearly, &nearly, unoffered.clone(), 2),
        Step::Offer(unoffered[..10].to_vec())
    );
    // None: wait, neither advancing nor completing with devices not offered.
    let full = busy(MAX_IN_PROGRESS);
    assert_eq!(c.next_step(&full, &full, unoffered, 2), Step::Wait);
}
