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

use std::path::PathBuf;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_chat_history_isolation_and_visible_refusals_in_chromium() {
    let wasm_missing = verifier_wasm()
        .is_none()
        .then(|| "the WebAssembly verifier is missing: run verifier-wasm/build.sh".to_owned());
    if !common::browser::may_run("chat browser test", wasm_missing) {
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
    let setup_code = web_ui.setup_code.clone().unwrap();
    let spki = web_ui.spki_sha256_base64.clone();
    let node_out = out_dir.clone();
    tokio::task::spawn_blocking(move || {
        common::browser::run_script(
            "chat browser flow",
            "chat_flows.mjs",
            &[
                ("CLOISTER_URL", url.as_str()),
                ("SETUP_CODE", setup_code.as_str()),
                ("SPKI", spki.as_str()),
                ("OUT_DIR", node_out.to_str().unwrap()),
            ],
        )
    })
    .await
    .unwrap();

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
