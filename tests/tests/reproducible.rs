//! Reproducibility: two builds of the same commit give byte-identical outputs although
//! they differ in folder, time, umask and CARGO_HOME. The second build is
//! `cloister build --check` against the first one's manifest, so it also proves that
//! `--check` finds no difference where there is none. Both use `--no-model` (the model
//! is a pinned file copied as-is; its digest is checked on every build).

use std::path::{Path, PathBuf};
use std::process::Command;

use cloister_image::build::{self, BuildOptions, Contents};
use cloister_image::progress::Progress;
use rustix::fs::Mode;

/// A fresh clone of the checkout's HEAD at `dest`.
fn clone_head(dest: &Path) {
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let status = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(cloister_tests::workspace_root())
        .arg(dest)
        .status()
        .expect("git runs");
    assert!(status.success(), "git clone failed");
}

/// A second cargo home at another path that shares the downloaded crates.
fn other_cargo_home(dest: &Path) -> PathBuf {
    let real = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    std::fs::create_dir_all(dest).unwrap();
    std::os::unix::fs::symlink(real.join("registry"), dest.join("registry")).unwrap();
    dest.to_path_buf()
}

fn options(source: &Path, out: &Path, target: &Path) -> BuildOptions {
    let mut opts = BuildOptions::new(source, out);
    opts.no_model = true;
    // PID 1 alone: two from-scratch builds of web-ui and model-runner would cost CI
    // half an hour. What makes builds reproducible (remapped paths, the fixed time,
    // sorted archive, umask, cargo home) is the same for every binary.
    opts.contents = Some(
        Contents::load(source)
            .expect("image/contents.toml reads")
            .pid1_only(),
    );
    opts.target_dir = Some(target.to_path_buf());
    opts.progress = Progress::stderr();
    opts
}

#[test]
fn two_builds_in_different_places_give_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (src_a, src_b) = (
        tmp.path().join("a/src"),
        tmp.path().join("b/elsewhere/cloister"),
    );
    clone_head(&src_a);
    clone_head(&src_b);

    // Build A: umask 022, the usual cargo home.
    let old = rustix::process::umask(Mode::from_raw_mode(0o022));
    let out_a = tmp.path().join("a/out");
    let built_a = build::build(&options(&src_a, &out_a, &tmp.path().join("a/target")))
        .expect("build A succeeds");

    // Build B: later, umask 077, another folder, another cargo home, through --check.
    rustix::process::umask(Mode::from_raw_mode(0o077));
    let mut opts_b = options(
        &src_b,
        &tmp.path().join("b/out"),
        &tmp.path().join("b/target"),
    );
    opts_b.cargo_home = Some(other_cargo_home(&tmp.path().join("b/cargo-home")));
    let differences =
        build::check(&out_a.join(build::MANIFEST), &opts_b).expect("build B succeeds");
    rustix::process::umask(old);

    assert!(
        differences.is_empty(),
        "the builds differ:\n{}",
        differences.join("\n")
    );
    for name in [
        build::VMLINUZ,
        build::INITRAMFS,
        build::CMDLINE,
        build::MANIFEST,
    ] {
        let a = std::fs::read(out_a.join(name)).unwrap();
        let b = std::fs::read(tmp.path().join("b/out").join(name)).unwrap();
        assert!(a == b, "{name} differs between the two builds");
    }

    // The building machine's folders reached no binary.
    let cpio = zstd_decompress(&out_a.join(build::INITRAMFS));
    let entries = cloister_image::cpio::parse(&cpio).unwrap();
    let init = entries
        .iter()
        .find(|e| e.path == "init")
        .expect("/init is in the image");
    let tmp_path = tmp.path().to_string_lossy().into_owned();
    assert!(
        !contains(&init.data, tmp_path.as_bytes()),
        "/init embeds the build folder"
    );
    assert!(
        !contains(&init.data, b"/.cargo/registry"),
        "/init embeds the cargo home"
    );
    assert!(
        contains(&init.data, b"/cloister/cargo-home/registry")
            || !contains(&init.data, b"registry/src"),
        "dependency paths are remapped"
    );
    assert!(!built_a.manifest.inputs.is_empty());
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn zstd_decompress(path: &Path) -> Vec<u8> {
    let out = Command::new("zstd")
        .arg("-dc")
        .arg(path)
        .output()
        .expect("zstd runs");
    assert!(out.status.success());
    out.stdout
}
