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
