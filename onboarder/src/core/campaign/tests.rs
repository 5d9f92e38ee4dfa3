use super::*;

fn serials(n: usize) -> Vec<DeviceId> {
    let maker = crate::core::MakerId::of_spki(b"maker");
    (0..n)
        .map(|i| DeviceId::new(maker.clone(), &format!("SN-{i:04}")).unwrap())
        .collect()
}

#[test]
fn waves_split_by_cumulative_percentage() {
    let waves = plan(&serials(1000), &[1, 10, 100]).unwrap();
    let sizes: Vec<usize> = waves.iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 90, 900]);
    let waves = plan(&serials(3), &[1, 10, 100]).unwrap();
    let sizes: Vec<usize> = waves.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 1, 1]);
    assert!(plan(&serials(3), &[10, 5, 100]).is_err());
    assert!(plan(&serials(3), &[10, 50]).is_err());
    assert!(plan::<DeviceId>(&[], &[100]).is_err());
}

fn campaign(failure_threshold: u8) -> Campaign {
    Campaign {
        id: "c".into(),
        release: vec![],
        version: "v".into(),
        waves: plan(&serials(100), &[10, 100]).unwrap(),
        percentages: vec![10, 100],
        failure_threshold,
        rate: None,
        wave_timeout: None,
        over_https: false,
        signed_urls: false,
        state: CampaignState::Running,
        wave: 0,
        wave_started_at: 0,
        created_at: 0,
        updated_at: 0,
        query: None,
        ramp: None,
    }
}

#[test]
fn failures_above_the_threshold_pause() {
    let c = campaign(10);
    let mut t = Tally::default();
    for _ in 0..9 {
        t.add(Some(&JobState::Healthy));
    }
    t.add(Some(&JobState::Failed {
        reason: "x".into(),
        refusal: None,
    }));
    assert_eq!(
        c.next_step(&t, &t, vec![], 0),
        Step::Advance { stragglers: 0 }
    );
    t.add(Some(&JobState::RolledBack { reason: "x".into() }));
    assert!(matches!(c.next_step(&t, &t, vec![], 0), Step::Pause(_)));
}

#[test]
fn a_wave_that_times_out_lets_the_next_go_but_the_campaign_waits_for_everyone() {
    let mut c = campaign(10);
    c.order(CampaignOrder::Pause, 50).unwrap();
    c.order(CampaignOrder::Resume, 100).unwrap();
    assert_eq!(c.wave_started_at, 100);
    let mut t = Tally::default();
    for _ in 0..9 {
        t.add(Some(&JobState::Healthy));
    }
    t.add(Some(&JobState::Offered));
    // Without a timeout a silent device holds the wave for ever.
    assert_eq!(c.next_step(&t, &t, vec![], 1_000_000), Step::Wait);
    c.wave_timeout = Some(60);
    assert_eq!(c.next_step(&t, &t, vec![], 159), Step::Wait);
    assert_eq!(
        c.next_step(&t, &t, vec![], 160),
        Step::Advance { stragglers: 1 }
    );
    // In the last wave, the campaign completes only when every wave is over.
    c.wave = 1;
    let mut last = Tally::default();
    last.add(Some(&JobState::Healthy));
    let mut all = t;
    all.add(Some(&JobState::Healthy));
    assert_eq!(c.next_step(&all, &last, vec![], 10_000), Step::Wait);
    let mut over = Tally::default();
    for _ in 0..11 {
        over.add(Some(&JobState::Healthy));
    }
    assert_eq!(c.next_step(&over, &last, vec![], 10_000), Step::Complete);
}
