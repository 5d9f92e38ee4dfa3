//! The admin API's OpenAPI description: valid for an independent validator
//! (`openapi-spec-validator`), and kept to under a property-based fuzzer driven by it
//! (`schemathesis`): no server error, no status, content type or body the description does not
//! allow.

use std::process::Command;

use crate::harness::*;

fn run(program: &str, args: &[&str], cwd: &std::path::Path) -> (bool, String) {
    // Schemathesis's hooks (CBOR bodies) live beside this file; its cache goes to `cwd`.
    let hooks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it");
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env("PYTHONPATH", hooks)
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .output()
        .unwrap_or_else(|e| panic!("{program} (scripts/test installs it in its venv): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_is_valid_and_a_fuzzer_driven_by_it_finds_nothing() {
    let world = World::new().await;
    world.expect(&["SN-OA-1", "SN-OA-2"], 30).await;
    world
        .agent(&world.device("SN-OA-1"))
        .onboard()
        .await
        .unwrap();
    let base = format!("http://{}", world.server.api_addr());
    let token = onboarder::pki::token(&world.data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("openapi.json");
    let (spec, report) = tokio::task::spawn_blocking({
        let (base, spec_path) = (base.clone(), spec_path.clone());
        move || {
            // Public, like the health check: the description holds no secret.
            let spec: serde_json::Value = ureq::get(format!("{base}/v1/openapi.json"))
                .call()
                .unwrap()
                .into_body()
                .read_json()
                .unwrap();
            std::fs::write(&spec_path, spec.to_string()).unwrap();
            let spec_file = spec_path.to_str().unwrap();
            let cwd = spec_path.parent().unwrap();
            let (valid, text) = run("openapi-spec-validator", &[spec_file], cwd);
            assert!(valid, "openapi-spec-validator: {text}");
            let auth = format!("Authorization: Bearer {token}");
            // A device that exists, so the routes about one reach past the lookup.
            let config = spec_path.with_file_name("schemathesis.toml");
            std::fs::write(&config, "[parameters]\n\"path.device\" = \"SN-OA-2\"\n").unwrap();
            let report = run(
                "schemathesis",
                &[
                    "--config-file",
                    config.to_str().unwrap(),
                    "run",
                    spec_file,
                    "--url",
                    &base,
                    "-H",
                    &auth,
                    "--checks",
                    "not_a_server_error,status_code_conformance,content_type_conformance,\
                     response_schema_conformance",
                    "--max-examples",
                    "25",
                    "--seed",
                    "1",
                    "--generation-database",
                    "none",
                    "--phases",
                    "examples,coverage,fuzzing",
                    "--workers",
                    "2",
                    "--no-color",
                ],
                cwd,
            );
            (spec, report)
        }
    })
    .await
    .unwrap();
    let paths = spec["paths"].as_object().unwrap();
    for path in [
        "/v1/devices",
        "/v1/search",
        "/v1/devices/{device}/labels",
        "/v1/campaigns/{id}/{order}",
        "/metrics",
        "/v1/openapi.json",
        "/crl/{file}",
    ] {
        assert!(paths.contains_key(path), "{path} is not described");
    }
    let (ok, text) = report;
    assert!(ok, "schemathesis found problems:\n{text}");
    eprintln!("{text}");
    // The fuzzer's requests left the audit chain whole.
    world.server.service().verify_audit().unwrap();
}
