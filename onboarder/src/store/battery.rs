//! The behaviour every store backend must have, written once: each backend's tests run
//! [`run`] on a fresh store of its own.

use crate::audit::{AuditEvent, verify_chain};
use crate::core::campaign::{Campaign, CampaignState};
use crate::core::release::{FirmwareKey, Release};
use crate::core::{DeviceId, DeviceRecord, MakerId};
use crate::store::{Change, DeviceWrite, Expect, Revocation, Store, StoreError};

fn id(serial: &str) -> DeviceId {
    DeviceId::new(MakerId::of_spki(b"maker"), serial).unwrap()
}

fn change(record: DeviceRecord, expect: Expect) -> Change {
    Change {
        devices: vec![DeviceWrite { record, expect }],
        audit: vec![AuditEvent::operator(None, "test", "", 1)],
        ..Change::default()
    }
}

/// Runs every check on the store `open` gives; `open` is called again to see what a store
/// reopened on the same data holds.
pub(crate) async fn run(open: impl Fn() -> Box<dyn Store>) {
    {
        let store = open();
        versions_guard_concurrent_writes_and_audit_chains(store.as_ref()).await;
        revocations_are_indexed_and_forgotten(store.as_ref()).await;
        the_repository_is_typed(store.as_ref()).await;
        tallies_move_with_their_change_only(store.as_ref()).await;
        index_entries_move_with_their_change_only(store.as_ref()).await;
        for i in 0..10 {
            let r = DeviceRecord::expected(id(&format!("SN-P{i}")), vec![1], None, 1);
            store.commit(change(r, Expect::Absent)).await.unwrap();
        }
    }
    // Reopened: the data and the audit head are there.
    let store = open();
    // SN-1, SN-P0..9, the tallies' SN-T0..49 and SN-T-LAST, the index's SN-X1 and SN-X2.
    assert_eq!(store.device_count().unwrap(), 64);
    assert_eq!(store.devices(Some(&id("SN-P4")), 100).unwrap().len(), 58);
    let (seq, head) = store.audit_head().unwrap();
    assert_eq!(seq, 66);
    verify_chain(store.audit(1, 100).unwrap(), &head).unwrap();
    assert_eq!(store.revocations().unwrap().len(), 1);
    assert_eq!(store.releases().unwrap().len(), 1);
    assert_eq!(store.tallies().unwrap().get("state/t"), Some(&101));
    let tagged = store.index("tag/b/", None, 10).unwrap();
    assert_eq!(tagged.len(), 1);
}

async fn index_entries_move_with_their_change_only(store: &dyn Store) {
    let indexing = |serial: &str, index: Vec<(String, Option<DeviceId>)>| {
        let r = DeviceRecord::expected(id(serial), vec![1], None, 1);
        Change {
            index,
            ..change(r, Expect::Absent)
        }
    };
    let put = |key: &str, serial: &str| (key.to_string(), Some(id(serial)));
    store
        .commit(indexing(
            "SN-X1",
            vec![put("tag/a/m/SN-X1", "SN-X1"), put("tag/b/m/SN-X1", "SN-X1")],
        ))
        .await
        .unwrap();
    store
        .commit(indexing("SN-X2", vec![put("tag/a/m/SN-X2", "SN-X2")]))
        .await
        .unwrap();
    // In key order, within the prefix only, after the cursor.
    let a = store.index("tag/a/", None, 10).unwrap();
    assert_eq!(
        a,
        vec![
            ("tag/a/m/SN-X1".to_string(), id("SN-X1")),
            ("tag/a/m/SN-X2".to_string(), id("SN-X2"))
        ]
    );
    assert_eq!(
        store.index("tag/a/", Some("tag/a/m/SN-X1"), 10).unwrap(),
        a[1..]
    );
    assert_eq!(store.index("tag/a/", None, 1).unwrap(), a[..1]);
    assert!(store.index("tag/c/", None, 10).unwrap().is_empty());
    // A refused change (SN-X1 exists) neither puts nor deletes.
    let refused = store
        .commit(indexing(
            "SN-X1",
            vec![
                ("tag/a/m/SN-X1".into(), None),
                put("tag/c/m/SN-X1", "SN-X1"),
            ],
        ))
        .await;
    assert!(matches!(refused, Err(StoreError::Conflict(_))));
    assert_eq!(store.index("tag/a/", None, 10).unwrap(), a);
    assert!(store.index("tag/c/", None, 10).unwrap().is_empty());
    // An accepted one deletes.
    let stored = store.device(&id("SN-X2")).unwrap().unwrap();
    store
        .commit(Change {
            index: vec![("tag/a/m/SN-X2".into(), None)],
            ..change(stored, Expect::Version(1))
        })
        .await
        .unwrap();
    assert_eq!(store.index("tag/a/", None, 10).unwrap(), a[..1]);
    // Records by id, in the order asked, a missing one as None.
    let read = store
        .devices_by_id(&[id("SN-X2"), id("SN-NONE"), id("SN-X1")])
        .unwrap();
    let serials: Vec<Option<String>> = read
        .iter()
        .map(|r| r.as_ref().map(|r| r.id.serial.clone()))
        .collect();
    assert_eq!(
        serials,
        [Some("SN-X2".to_string()), None, Some("SN-X1".to_string())]
    );
}

async fn tallies_move_with_their_change_only(store: &dyn Store) {
    let moving = |serial: &str, delta: i64| {
        let r = DeviceRecord::expected(id(serial), vec![1], None, 1);
        Change {
            tallies: vec![("state/t".into(), delta), ("state/u".into(), -delta)],
            ..change(r, Expect::Absent)
        }
    };
    assert!(store.tallies().unwrap().is_empty());
    // Changes committed together (most likely one group) each count.
    let commits: Vec<_> = (0..50)
        .map(|i| tokio::spawn(store.commit(moving(&format!("SN-T{i}"), 2))))
        .collect();
    for commit in commits {
        commit.await.unwrap().unwrap();
    }
    assert_eq!(store.tallies().unwrap().get("state/t"), Some(&100));
    assert_eq!(store.tallies().unwrap().get("state/u"), Some(&-100));
    // A refused change moves nothing, even beside an accepted one.
    let (refused, accepted) = tokio::join!(
        store.commit(moving("SN-T1", 1000)),
        store.commit(moving("SN-T-LAST", 1)),
    );
    assert!(matches!(refused, Err(StoreError::Conflict(_))));
    accepted.unwrap();
    let tallies = store.tallies().unwrap();
    assert_eq!(tallies.get("state/t"), Some(&101));
    assert_eq!(tallies.get("state/u"), Some(&-101));
}

async fn versions_guard_concurrent_writes_and_audit_chains(store: &dyn Store) {
    let r = DeviceRecord::expected(id("SN-1"), vec![1], None, 1);
    store
        .commit(change(r.clone(), Expect::Absent))
        .await
        .unwrap();
    assert_eq!(
        store.commit(change(r.clone(), Expect::Absent)).await,
        Err(StoreError::Conflict(format!(
            "{}: expected Absent, found version Some(1)",
            id("SN-1")
        )))
    );
    let stored = store.device(&id("SN-1")).unwrap().unwrap();
    assert_eq!(stored.version, 1);
    store
        .commit(change(stored.clone(), Expect::Version(1)))
        .await
        .unwrap();
    assert!(matches!(
        store.commit(change(stored, Expect::Version(1))).await,
        Err(StoreError::Conflict(_))
    ));
    // Two successful changes, two audit entries; refused changes left none.
    let (seq, head) = store.audit_head().unwrap();
    assert_eq!(seq, 2);
    verify_chain(store.audit(1, 100).unwrap(), &head).unwrap();
}

async fn revocations_are_indexed_and_forgotten(store: &dyn Store) {
    let revocation = |serial: &str| Revocation {
        cert_serial: serial.into(),
        issuer: vec![1],
        device: id("SN-1"),
        reason: certs::crl::Reason::Superseded,
        revoked_at: 1,
        effective_at: 1,
        not_after: 2,
    };
    store
        .commit(Change {
            revocations: vec![revocation("aa"), revocation("bb")],
            ..Change::default()
        })
        .await
        .unwrap();
    store
        .commit(Change {
            forget_revocations: vec!["aa".into()],
            ..Change::default()
        })
        .await
        .unwrap();
    assert_eq!(store.revocations().unwrap(), [revocation("bb")]);
}

async fn the_repository_is_typed(store: &dyn Store) {
    let release = Release {
        digest: vec![7; 32],
        manifest: vec![1, 2],
        vendor_id: "v".into(),
        class_id: "c".into(),
        sequence: 3,
        version: "1.0".into(),
        size: 10,
        uploaded_at: 1,
        sbom: None,
    };
    let mut campaign = Campaign {
        id: "c-1".into(),
        release: release.digest.clone(),
        version: "1.0".into(),
        waves: vec![vec![id("SN-1")]],
        percentages: vec![100],
        failure_threshold: 5,
        rate: None,
        wave_timeout: None,
        over_https: false,
        signed_urls: false,
        state: CampaignState::Created,
        wave: 0,
        wave_started_at: 0,
        created_at: 1,
        updated_at: 1,
        query: None,
        ramp: None,
    };
    let key = FirmwareKey {
        vendor_id: "v".into(),
        key: vec![9; 32],
        fingerprint: "ab".into(),
        added_at: 1,
    };
    store
        .commit(Change {
            releases: vec![release.clone()],
            campaigns: vec![campaign.clone()],
            firmware_keys: vec![key.clone()],
            ..Change::default()
        })
        .await
        .unwrap();
    campaign.state = CampaignState::Running;
    store
        .commit(Change {
            campaigns: vec![campaign.clone()],
            ..Change::default()
        })
        .await
        .unwrap();
    assert_eq!(store.release(&release.digest).unwrap(), Some(release));
    assert_eq!(store.release(&[0; 32]).unwrap(), None);
    assert_eq!(store.campaign("c-1").unwrap(), Some(campaign.clone()));
    assert_eq!(store.campaigns().unwrap(), [campaign]);
    assert_eq!(store.firmware_keys().unwrap(), [key]);
}
