//! A production image cannot contain the simulated TEE: `cloister build` (`--tee tdx`, the
//! default) compiles web-ui without its `simulated-tee` feature, so the name of the
//! simulation root appears nowhere in its binary, while a `--tee simulated` build carries
//! it (the same search would have found it). Both builds leave the model out; they share
//! the guest target folder with the boot tests.

use std::path::{Path, PathBuf};

use cloister_image::build::{self, BuildOptions, TeeChoice};
use cloister_image::progress::Progress;

/// The simulation root's name, as the development chain's certificates carry it
/// (cloister-tee's `simulated::ROOT_CA_NAME` starts with it).
const SIMULATION_ROOT_NAME: &[u8] = b"Cloister SIMULATED TDX root";
/// Where web-ui lies in the image (image/contents.toml).
const WEB_UI_PATH: &str = "usr/bin/web-ui";

/// The guest build's target folder: `$CLOISTER_GUEST_TARGET_DIR`, else the one the boot
/// tests share (`$CLOISTER_CACHE/target-guest`).
fn guest_target_dir() -> PathBuf {
    std::env::var_os("CLOISTER_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| build::default_cache_dir().join("target-guest"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds a no-model image for `tee` and returns web-ui's bytes from its initramfs.
fn web_ui_of(tee: TeeChoice, out: &Path) -> Vec<u8> {
    let mut opts = BuildOptions::new(workspace_root(), out);
    opts.no_model = true;
    opts.tee = tee;
    opts.target_dir = Some(guest_target_dir());
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
fn only_a_simulated_build_carries_the_simulation_root() {
    let dir = tempfile::tempdir().unwrap();
    let production = web_ui_of(TeeChoice::Tdx, &dir.path().join("tdx"));
    assert!(
        !contains(&production, SIMULATION_ROOT_NAME),
        "the production web-ui ({} bytes) contains the simulation root's name",
        production.len()
    );
    let simulated = web_ui_of(TeeChoice::Simulated, &dir.path().join("simulated"));
    assert!(
        contains(&simulated, SIMULATION_ROOT_NAME),
        "the simulated web-ui ({} bytes) lacks the simulation root's name: the search proves nothing",
        simulated.len()
    );
    println!(
        "web-ui: production {} bytes, simulated {} bytes",
        production.len(),
        simulated.len()
    );
}
