//! The attested chat in Chromium: starts model-runner on the real model and the real
//! `web-ui` binary under the simulated TEE (with the WebAssembly verifier), runs
//! `tests/browser/chat_flows.mjs` with node, then searches web-ui's state folder and logs,
//! byte for byte, for the prompt and the answers the browser saw: none may be there.
//! Screenshots land in `$CARGO_TARGET_TMPDIR/chat-browser/`.
//!
//! Needs Chromium, node and `npm ci` in `tests/browser/` (as the sign-in flows do), the test
//! model (model-runner/scripts/fetch-model.sh) and the verifier built by
//! `verifier-wasm/build.sh` (found through `CLOISTER_VERIFIER_WASM`, else in the target
//! folder). Without them the test says SKIPPED and passes, unless
//! `CLOISTER_REQUIRE_BROWSER=1` (CI) makes that a failure.
//!
//! Run with `cargo test -p cloister-web-ui --features simulated-tee --test chat_browser`.

#![cfg(feature = "simulated-tee")]

mod chat_common;
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn verifier_wasm() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("CLOISTER_VERIFIER_WASM") {
        return Some(PathBuf::from(path));
    }
    // CARGO_TARGET_TMPDIR is <target>/tmp; build.sh writes under <target>.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("..");
    [
        "verifier-wasm/wasm32-unknown-unknown/release/cloister_verifier_wasm.wasm",
        "verifier.wasm",
    ]
    .iter()
    .map(|p| target.join(p))
    .find(|p| p.exists())
}

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
    if verifier_wasm().is_none() {
        return Some("the WebAssembly verifier is missing: run verifier-wasm/build.sh".into());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_chat_history_isolation_and_visible_refusals_in_chromium() {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if let Some(reason) = missing_dependencies(&browser_dir) {
        assert!(
            std::env::var("CLOISTER_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "chat browser test dependencies missing: {reason}"
        );
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let Some(model) = chat_common::model_path() else {
        return;
    };
    let model_runner = chat_common::spawn_model_runner(&model).await;
    let root = tempfile::tempdir().unwrap();
    let measurements_path = root.path().join("measurements.json");
    std::fs::write(
        &measurements_path,
        chat_common::measurements_json("chat browser firmware"),
    )
    .unwrap();
    let wasm = verifier_wasm().unwrap();
    let mut web_ui = chat_common::start_web_ui(
        root.path(),
        &measurements_path,
        model_runner,
        &["--verifier-wasm", wasm.to_str().unwrap()],
    );
    let url = format!("https://localhost:{}", web_ui.address.port());
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chat-browser");
    let _ = std::fs::remove_dir_all(&out_dir);
    let script = browser_dir.join("chat_flows.mjs");
    let setup_code = web_ui.setup_code.clone().unwrap();
    let spki = web_ui.spki_sha256_base64.clone();
    let node_out = out_dir.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .env("CLOISTER_URL", &url)
            .env("SETUP_CODE", &setup_code)
            .env("SPKI", &spki)
            .env("OUT_DIR", &node_out)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "chat browser flow failed:\n{stdout}"
    );
    assert!(!stdout.lines().any(|line| line.starts_with("FAIL")));

    // No plaintext: what the browser saw in the clear is nowhere in the server's files.
    web_ui.stop();
    let seen: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("plaintext.json")).unwrap()).unwrap();
    let mut needles = vec![
        seen["prompt"].as_str().unwrap().to_owned(),
        "Marrowick-5528".to_owned(),
    ];
    for answer in seen["answers"].as_array().unwrap() {
        let answer = answer.as_str().unwrap().trim();
        if answer.len() >= 12 {
            needles.push(answer.to_owned());
        }
    }
    assert!(needles.len() >= 3, "the browser saw answers: {needles:?}");
    let mut files = chat_common::files_under(&web_ui.state_dir);
    files.push(web_ui.log_file.clone());
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for needle in &needles {
            assert!(
                !chat_common::contains(&bytes, needle.as_bytes()),
                "{} contains chat plaintext",
                file.display()
            );
        }
    }
}
