//! Browser flows: starts web-ui in-process and runs `tests/browser/flows.mjs` with node,
//! which drives Debian's Chromium through playwright-core with a virtual authenticator
//! (PRF on). Screenshots and the request log land in `$CARGO_TARGET_TMPDIR/browser-flows/`.
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci` done in `tests/browser/`
//! (scripts/setup-test-deps.sh). Without them the test says SKIPPED and passes, unless
//! `CLOISTER_REQUIRE_BROWSER=1`, as CI sets, turns that into a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cloister_web_ui::config::Settings;

fn missing_dependencies(browser_dir: &Path) -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} is missing"));
    }
    if !browser_dir.join("node_modules/playwright-core").exists() {
        return Some("run `npm ci` in web-ui/tests/browser".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is missing".into());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_setup_invitation_usernameless_sign_in_prf_and_revocation() {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if let Some(reason) = missing_dependencies(&browser_dir) {
        assert!(
            std::env::var("CLOISTER_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "browser test dependencies missing: {reason}"
        );
        eprintln!("SKIPPED: {reason}");
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

    let script = browser_dir.join("flows.mjs");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .env("CLOISTER_URL", &url)
            .env("SETUP_CODE", &setup_code)
            .env("SPKI", &spki)
            .env("OUT_DIR", &out_dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "browser flow failed:\n{stdout}");
    assert!(!stdout.contains("FAIL"));

    // The database holds no PRF output either way: it holds no `prf` at all.
    let database = std::fs::read(server.state.store.path()).unwrap();
    assert!(!String::from_utf8_lossy(&database).contains("\"prf\""));
    server.stop().await;
}
