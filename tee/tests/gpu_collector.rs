//! The guest GPU collector (tee/src/gpu.rs) against a fake NVML with the same symbols
//! (tests/fake_nvml/nvml.rs, compiled here with rustc as libnvidia-ml.so.1), serving NVIDIA's
//! published evidence (measurements/tests/data/nvidia, from NVIDIA/attestation-sdk,
//! Apache-2.0). The real library is used only where present (`real_nvml_if_present`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cloister_tee::gpu::{self, GpuError, Nvml, Policy};

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../measurements/tests/data/nvidia"
);
/// 2024-06-01T00:00:00Z.
const NOW: u64 = 1_717_200_000;

/// Builds the fake once per test binary.
fn fake_library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("cloister-fake-nvml-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let lib = out.join("libnvidia-ml.so.1");
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_nvml/nvml.rs");
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
        let status = Command::new(rustc)
            .args(["--edition", "2024", "--crate-type", "cdylib", "-O", "-o"])
            .arg(&lib)
            .arg(src)
            .status()
            .expect("run rustc");
        assert!(status.success(), "building the fake NVML failed");
        lib
    })
}

/// A folder the fake serves: one H100 (driver 580.159.03, multi-GPU passthrough mode).
fn gpu_folder(cc_state: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cc_state"), cc_state).unwrap();
    std::fs::copy(
        format!("{DATA}/attestation-sdk/hopperAttestationReport.txt"),
        dir.path().join("gpu0.report"),
    )
    .unwrap();
    std::fs::copy(
        format!("{DATA}/attestation-sdk/hopperCertChain.txt"),
        dir.path().join("gpu0.chain"),
    )
    .unwrap();
    dir
}

/// The nonce inside the published report (a real GPU signs the one it is given; the fake
/// can only replay).
fn report_nonce() -> [u8; 32] {
    let text = std::fs::read_to_string(format!(
        "{DATA}/attestation-sdk/hopperAttestationReport.txt"
    ))
    .unwrap();
    hex::decode(&text.trim()[8..72])
        .unwrap()
        .try_into()
        .unwrap()
}

fn policy() -> Policy<'static> {
    Policy {
        expected_driver: Some("580.159.03"),
        rims: &[],
        crls: &[],
        now_unix_s: NOW,
    }
}

/// The fake reads FAKE_NVML_DIR at each call; tests that set it run one at a time.
fn with_fake<T>(dir: &Path, f: impl FnOnce(Nvml) -> T) -> T {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: no other thread of this test binary reads the environment while the lock
    // is held (every test that loads the fake goes through here).
    unsafe { std::env::set_var("FAKE_NVML_DIR", dir) };
    let nvml = Nvml::load(Some(fake_library())).expect("load the fake");
    f(nvml)
}

fn ready(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("ready")).ok()
}

#[test]
fn verified_gpus_are_opened_and_the_nonce_reaches_the_gpu() {
    let dir = gpu_folder("2 1 0");
    let nonce = report_nonce();
    let outcome = with_fake(dir.path(), |nvml| {
        assert!(!nvml.ready_state().unwrap());
        let o = gpu::attest_and_open(&nvml, &nonce, &policy()).expect("attested");
        assert!(nvml.ready_state().unwrap());
        o
    });
    assert_eq!(ready(dir.path()).as_deref(), Some("1"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("gpu0.nonce")).unwrap(),
        hex::encode(nonce)
    );
    assert_eq!(outcome.gpus[0].compute, "gpu-cc");
    assert_eq!(outcome.gpus[0].driver_version, "580.159.03");
}

#[test]
fn another_nonce_keeps_the_gpus_closed() {
    let dir = gpu_folder("2 1 0");
    let mut nonce = report_nonce();
    nonce[0] ^= 1;
    let e = with_fake(dir.path(), |nvml| {
        gpu::attest_and_open(&nvml, &nonce, &policy())
    })
    .unwrap_err();
    assert!(e.to_string().contains("gpu0:gpu_nonce"), "{e}");
    assert_eq!(ready(dir.path()), None);
}

#[test]
fn cc_off_devtools_or_not_production_refuse_before_any_evidence() {
    for (state, why) in [
        ("2 0 0", "confidential computing is off"),
        ("2 1 1", "DevTools"),
        ("1 1 0", "not production"),
    ] {
        let dir = gpu_folder(state);
        let e = with_fake(dir.path(), |nvml| {
            gpu::attest_and_open(&nvml, &report_nonce(), &policy())
        })
        .unwrap_err();
        assert!(
            matches!(e, GpuError::Refused(_)) && e.to_string().contains(why),
            "{e}"
        );
        assert!(!dir.path().join("gpu0.nonce").exists());
        assert_eq!(ready(dir.path()), None);
    }
}

#[test]
fn nvml_errors_are_named_and_keep_the_gpus_closed() {
    // What a GPU outside CC mode answers the evidence calls: NOT_SUPPORTED (3).
    let dir = gpu_folder("2 1 0");
    std::fs::write(
        dir.path()
            .join("fail_nvmlDeviceGetConfComputeGpuAttestationReport"),
        "3",
    )
    .unwrap();
    let e = with_fake(dir.path(), |nvml| {
        gpu::attest_and_open(&nvml, &report_nonce(), &policy())
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "nvmlDeviceGetConfComputeGpuAttestationReport failed: NVML error 3 (Not Supported)"
    );
    assert_eq!(ready(dir.path()), None);
    // A wrong pinned driver is a failed check, not a warning.
    let dir = gpu_folder("2 1 0");
    let e = with_fake(dir.path(), |nvml| {
        gpu::attest_and_open(
            &nvml,
            &report_nonce(),
            &Policy {
                expected_driver: Some("550.90.07"),
                ..policy()
            },
        )
    })
    .unwrap_err();
    assert!(e.to_string().contains("gpu0:gpu_driver"), "{e}");
    // No GPU at all.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cc_state"), "2 1 0").unwrap();
    let e = with_fake(dir.path(), |nvml| {
        gpu::attest_and_open(&nvml, &report_nonce(), &policy())
    })
    .unwrap_err();
    assert!(e.to_string().contains("no GPU"), "{e}");
}

#[test]
fn a_missing_library_is_a_clear_error() {
    let e = Nvml::load(Some(Path::new("/nonexistent/libnvidia-ml.so.1"))).unwrap_err();
    assert!(
        e.to_string().starts_with("cannot load NVML (/nonexistent/"),
        "{e}"
    );
}

#[test]
fn real_nvml_if_present() {
    // On a machine with NVIDIA's driver: load it and read the CC state (read-only; never
    // changes the GPU's mode). Elsewhere there is nothing to test.
    match Nvml::load(None) {
        Err(e) => eprintln!("no real NVML here: {e}"),
        Ok(nvml) => {
            let state = nvml.cc_state();
            eprintln!(
                "real NVML: CC state {state:?}, {:?} GPUs",
                nvml.device_count()
            );
        }
    }
}
