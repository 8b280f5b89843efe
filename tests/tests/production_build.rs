//! A production image cannot contain the simulated TEE: `cloister build` (`--tee tdx`, the
//! default) compiles web-ui without its `simulated-tee` feature, so the simulated TEE's
//! signing code appears nowhere in its binary, while a `--tee simulated` build carries it
//! (the same search would have found it). (The simulation root's certificate itself is in
//! every build: the verifier carries it to name and refuse simulated quotes.) Both builds leave the model out; they share
//! the guest target folder with the boot tests.

use std::path::Path;

use cloister_image::build::{self, BuildOptions, TeeChoice};
use cloister_image::progress::Progress;

/// A string only the simulated TEE's quoting code holds (cloister-tee's `simulated`
/// module, compiled only with its feature).
const SIMULATION_MARKER: &[u8] = b"Cloister SIMULATED TDX dev key: ";
/// Where web-ui lies in the image (image/contents.toml).
const WEB_UI_PATH: &str = "usr/bin/web-ui";

/// Builds a no-model image for `tee` and returns web-ui's bytes from its initramfs.
fn web_ui_of(tee: TeeChoice, out: &Path) -> Vec<u8> {
    let mut opts = BuildOptions::new(cloister_tests::workspace_root(), out);
    opts.no_model = true;
    opts.tee = tee;
    opts.target_dir = Some(cloister_tests::guest_target_dir(&build::default_cache_dir()));
    opts.progress = Progress::stderr();
    let built = build::build(&opts).expect("the image builds");
    assert_eq!(built.manifest.tee, tee);
    let cpio = build::read_initramfs(&out.join(build::INITRAMFS)).expect("the initramfs reads");
    cloister_image::cpio::parse(&cpio)
        .expect("the initramfs parses")
        .into_iter()
        .find(|e| e.path == WEB_UI_PATH)
        .unwrap_or_else(|| panic!("no /{WEB_UI_PATH} in the image"))
        .data
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn only_a_simulated_build_carries_the_simulated_tee() {
    let dir = tempfile::tempdir().unwrap();
    let production = web_ui_of(TeeChoice::Tdx, &dir.path().join("tdx"));
    assert!(
        !contains(&production, SIMULATION_MARKER),
        "the production web-ui ({} bytes) contains the simulated TEE",
        production.len()
    );
    let simulated = web_ui_of(TeeChoice::Simulated, &dir.path().join("simulated"));
    assert!(
        contains(&simulated, SIMULATION_MARKER),
        "the simulated web-ui ({} bytes) lacks the simulated TEE's marker: the search proves nothing",
        simulated.len()
    );
    println!(
        "web-ui: production {} bytes, simulated {} bytes",
        production.len(),
        simulated.len()
    );
}
