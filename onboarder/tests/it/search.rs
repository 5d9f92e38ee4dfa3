//! Inventory: operator labels, searches that walk the device index, saved queries.

use onboarder::core::DeviceState;
use onboarder::core::query::{DeviceQuery, Labels};
use onboarder::operator::api::SearchParams;
use onboarder::operator::client::ApiClient;

use crate::harness::*;

fn client(world: &World) -> ApiClient {
    let base = format!("http://{}", world.server.api_addr());
    ApiClient::new(&base, onboarder::pki::token(&world.data).unwrap())
}

fn serials(view: &onboarder::operator::api::SearchView) -> Vec<String> {
    view.devices.iter().map(|d| d.serial.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_searches_and_saved_queries_find_the_right_devices() {
    let world = World::new().await;
    let serials_all: Vec<String> = (0..12).map(|i| format!("SN-INV{i:02}")).collect();
    let named: Vec<&str> = serials_all.iter().map(String::as_str).collect();
    world.expect(&named, 30).await;
    for serial in &named[..4] {
        world.agent(&world.device(serial)).onboard().await.unwrap();
    }
    let api = client(&world);
    let audit_before = world.audit().len();
    let (found, by_state, tagged, both, paged, saved, bad_label, bad_cursor, after_bad) =
        tokio::task::spawn_blocking(move || {
            // Tag the even onboarded devices, give every onboarded one a site.
            for (i, serial) in ["SN-INV00", "SN-INV01", "SN-INV02", "SN-INV03"]
                .iter()
                .enumerate()
            {
                let mut labels = Labels::default();
                if i % 2 == 0 {
                    labels.add_tags.insert("pilot".into());
                }
                labels.set.insert("site".into(), format!("plant-{}", i / 2));
                api.label(serial, &labels).unwrap();
            }
            let search = |p: SearchParams| api.search(&p).unwrap();
            let found = search(SearchParams {
                serial: Some("SN-INV1".into()),
                ..Default::default()
            });
            let by_state = search(SearchParams {
                state: Some(DeviceState::Active),
                ..Default::default()
            });
            let tagged = search(SearchParams {
                tags: Some("pilot".into()),
                ..Default::default()
            });
            let both = search(SearchParams {
                tags: Some("pilot".into()),
                attrs: Some("site=plant-1".into()),
                ..Default::default()
            });
            // Every expected device, five per page.
            let mut paged = Vec::new();
            let mut after = None;
            loop {
                let page = search(SearchParams {
                    state: Some(DeviceState::Expected),
                    limit: Some(5),
                    after: after.clone(),
                    ..Default::default()
                });
                paged.extend(serials(&page));
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let query = DeviceQuery {
                tags: vec!["pilot".into()],
                state: Some(DeviceState::Active),
                ..Default::default()
            };
            api.save_query("pilots", &query).unwrap();
            let saved = (
                api.queries().unwrap(),
                search(SearchParams {
                    query: Some("pilots".into()),
                    ..Default::default()
                }),
            );
            // Refused, and nothing changes.
            let mut too_long = Labels::default();
            too_long.add_tags.insert("x".repeat(500));
            let bad_label = api.label("SN-INV00", &too_long).unwrap_err().to_string();
            let bad_cursor = api
                .search(&SearchParams {
                    tags: Some("pilot".into()),
                    after: Some("state/expected/zz".into()),
                    ..Default::default()
                })
                .unwrap_err()
                .to_string();
            let after_bad = api.device("SN-INV00").unwrap();
            (
                found, by_state, tagged, both, paged, saved, bad_label, bad_cursor, after_bad,
            )
        })
        .await
        .unwrap();
    assert_eq!(serials(&found), ["SN-INV10", "SN-INV11"]);
    assert_eq!(
        serials(&by_state),
        ["SN-INV00", "SN-INV01", "SN-INV02", "SN-INV03"]
    );
    assert_eq!(serials(&tagged), ["SN-INV00", "SN-INV02"]);
    assert_eq!(serials(&both), ["SN-INV02"]);
    assert_eq!(paged, serials_all[4..]);
    assert!(saved.0.contains_key("pilots"));
    assert_eq!(serials(&saved.1), ["SN-INV00", "SN-INV02"]);
    assert!(bad_label.contains("400"), "{bad_label}");
    assert!(bad_cursor.contains("another search"), "{bad_cursor}");
    assert_eq!(after_bad.tags.len(), 1, "a refused label changed nothing");
    // Four labellings and one saved query were audited; the refusals were not.
    let audit = world.audit();
    let new: Vec<_> = audit[audit_before..]
        .iter()
        .map(|e| e.event.action.clone())
        .collect();
    assert_eq!(
        new.iter().filter(|a| *a == "labelled").count(),
        4,
        "{new:?}"
    );
    assert_eq!(new.iter().filter(|a| *a == "query-saved").count(), 1);
    world.assert_tallies_agree();
    assert_eq!(
        world
            .server
            .service()
            .store()
            .tallies()
            .unwrap()
            .get("tag/pilot"),
        Some(&2)
    );
}
