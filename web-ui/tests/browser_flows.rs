//! Browser flows: starts web-ui in-process and runs `tests/browser/flows.mjs` with node,
//! which drives Debian's Chromium through playwright-core with a virtual authenticator
//! (PRF on). Screenshots and the request log land in `$CARGO_TARGET_TMPDIR/browser-flows/`.
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci` done in `tests/browser/`
//! (scripts/setup-test-deps.sh). Without them the test says SKIPPED and passes, unless
//! `CLOISTER_REQUIRE_BROWSER=1`, as CI sets, turns that into a failure.

mod common;

use std::path::PathBuf;

use cloister_web_ui::config::Settings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_setup_invitation_usernameless_sign_in_prf_and_revocation() {
    if !common::browser::may_run("browser test", None) {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let supervisor_socket = state.path().join("supervisor.sock");
    let _supervisor = common::spawn_supervisor_socket(&supervisor_socket);
    let mut settings = Settings::new(state.path().join("web-ui"));
    settings.listen_address = [127, 0, 0, 1].into();
    settings.https_port = 0;
    settings.http_port = None;
    settings.supervisor_socket = supervisor_socket;
    settings.model_metrics_url = Some(common::spawn_metrics_endpoint().await);
    let measurements = state.path().join("measurements.json");
    let mrtd = "5e".repeat(48);
    std::fs::write(
        &measurements,
        format!("{{\"mrtd\":\"{mrtd}\",\"events\":{{}}}}"),
    )
    .unwrap();
    settings.measurements_file = Some(measurements);
    let server = cloister_web_ui::start(settings).await.unwrap();
    let setup_code = server.setup_code.clone().unwrap();
    let spki = server.state.resolver.facts().spki_sha256_base64;
    let url = format!("https://localhost:{}", server.https_address.port());
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-flows");
    let _ = std::fs::remove_dir_all(&out_dir);

    let stdout = tokio::task::spawn_blocking(move || {
        common::browser::run_script(
            "browser flow",
            "flows.mjs",
            &[
                ("CLOISTER_URL", url.as_str()),
                ("SETUP_CODE", setup_code.as_str()),
                ("SPKI", spki.as_str()),
                ("OUT_DIR", out_dir.to_str().unwrap()),
            ],
        )
    })
    .await
    .unwrap();
    assert!(!stdout.contains("FAIL"));

    // The database holds no PRF output either way: it holds no `prf` at all.
    let database = std::fs::read(server.state.store.path()).unwrap();
    assert!(!String::from_utf8_lossy(&database).contains("\"prf\""));
    server.stop().await;
}
