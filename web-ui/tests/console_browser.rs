//! The owner's console in Chromium at a desktop width (1280 px) and a phone width (390 px),
//! with the simulated TEE so that the attestation table lists every check with its values:
//! screenshots of both land in `$CARGO_TARGET_TMPDIR/console-browser/`, and the test fails
//! when the page is taller than 4,000 px at 1280, when anything overflows the width, or when
//! a long value (a register, a hash) takes more than one line.
//!
//! Run with `cargo test -p cloister-web-ui --features simulated-tee --test console_browser`.
//! Needs Chromium, node and playwright-core (`npm ci` in `tests/browser/`); without them the
//! test says SKIPPED and passes, unless `CLOISTER_REQUIRE_BROWSER=1`.

#![cfg(feature = "simulated-tee")]

mod chat_common;
mod common;

use std::path::PathBuf;

use cloister_web_ui::config::Settings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_reads_well_at_desktop_and_phone_widths() {
    if !common::browser::may_run("console browser test", None) {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let supervisor_socket = state.path().join("supervisor.sock");
    let _supervisor = common::spawn_supervisor_socket(&supervisor_socket);
    let measurements = state.path().join("measurements.json");
    std::fs::write(&measurements, chat_common::measurements_json("console")).unwrap();
    let mut settings = Settings::new(state.path().join("web-ui"));
    settings.listen_address = [127, 0, 0, 1].into();
    settings.https_port = 0;
    settings.http_port = None;
    settings.supervisor_socket = supervisor_socket;
    settings.model_metrics_url = Some(common::spawn_metrics_endpoint().await);
    settings.measurements_file = Some(measurements.clone());
    settings.chat.tee = cloister_web_ui::chat::TeeChoice::Simulated;
    settings.chat.expected_measurements = Some(measurements);
    let server = cloister_web_ui::start(settings).await.unwrap();
    let setup_code = server.setup_code.clone().unwrap();
    let spki = server.state.resolver.facts().spki_sha256_base64;
    let url = format!("https://localhost:{}", server.https_address.port());
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-browser");
    let _ = std::fs::remove_dir_all(&out_dir);
    let script_out = out_dir.clone();

    let stdout = tokio::task::spawn_blocking(move || {
        common::browser::run_script(
            "console browser test",
            "console_screenshots.mjs",
            &[
                ("CLOISTER_URL", url.as_str()),
                ("SETUP_CODE", setup_code.as_str()),
                ("SPKI", spki.as_str()),
                ("OUT_DIR", script_out.to_str().unwrap()),
            ],
        )
    })
    .await
    .unwrap();
    for width in [1280, 390] {
        let shot = out_dir.join(format!("console-{width}.png"));
        let bytes = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(
            bytes > 10_000,
            "no screenshot at {width} px: {}",
            shot.display()
        );
    }
    assert!(stdout.contains("ok   the page at 1280 px is at most 4000 px tall"));
    server.stop().await;
}
