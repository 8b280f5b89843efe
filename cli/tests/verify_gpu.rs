//! End-to-end tests of `cloister verify-gpu` on real NVIDIA evidence (measurements/tests/data/
//! nvidia, from NVIDIA/nvtrust and NVIDIA/attestation-sdk, Apache-2.0): the real binary, real
//! files, the exit code and one line per check.

use std::path::PathBuf;
use std::process::{Command, Output};

fn data(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../measurements/tests/data/nvidia")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

fn cloister(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(args)
        .output()
        .expect("run cloister")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(check))
        .unwrap_or_else(|| panic!("no line for {check} in\n{out}"))
}

const NONCE: &str = "e97b23a1718095a0e9e35edca810768c70a6a5a389b705e753b197912bc11576";
const NOW: &str = "2024-06-01T00:00:00Z";

#[test]
fn hopper_evidence_with_its_nonce_is_not_refused_but_not_fully_verified() {
    let o = cloister(&[
        "verify-gpu",
        &data("attestation-sdk/hopper_evidence.json"),
        "--nonce",
        NONCE,
        "--now",
        NOW,
    ]);
    let out = stdout(&o);
    for check in [
        "gpu_report_signature",
        "gpu_cert_chain",
        "gpu_fwid",
        "gpu_nonce",
    ] {
        assert!(line(&out, check).trim_start().starts_with("PASS"), "{out}");
    }
    // No RIM, no pinned driver, no revocation data: said, and not a pass.
    assert!(
        line(&out, "gpu_measurements")
            .trim_start()
            .starts_with("UNCHECKED")
    );
    assert!(
        line(&out, "gpu_revocation")
            .trim_start()
            .starts_with("UNCHECKED")
    );
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("NOT FULLY VERIFIED"));
}

#[test]
fn wrong_nonce_is_refused_with_the_check_named() {
    let mut nonce = NONCE.to_owned();
    nonce.replace_range(0..2, "00");
    let o = cloister(&[
        "verify-gpu",
        &data("attestation-sdk/multi_gpu_hopper.json"),
        "--nonce",
        &nonce,
        "--now",
        NOW,
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("GPU ")).count(),
        4,
        "{out}"
    );
    assert!(line(&out, "gpu_nonce").trim_start().starts_with("FAIL"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("gpu0:gpu_nonce") && err.contains("gpu3:gpu_nonce"),
        "{err}"
    );
}

#[test]
fn pinned_driver_version_and_protected_pcie_mode() {
    // ppcie evidence: driver 590.12, protected-PCIe mode.
    let ev = data("nvtrust/ppcie_gpu_evidence.json");
    let o = cloister(&["verify-gpu", &ev, "--driver", "590.12", "--now", NOW]);
    let out = stdout(&o);
    assert!(
        line(&out, "gpu_driver").trim_start().starts_with("PASS"),
        "{out}"
    );
    assert!(line(&out, "gpu_mode").contains("gpu-ppcie"), "{out}");
    let o = cloister(&["verify-gpu", &ev, "--driver", "550.90.07", "--now", NOW]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        line(&stdout(&o), "gpu_driver")
            .trim_start()
            .starts_with("FAIL")
    );
}

#[test]
fn bad_arguments_are_clear_errors() {
    let ev = data("attestation-sdk/hopper_evidence.json");
    let o = cloister(&["verify-gpu", &ev, "--nonce", "abcd"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("32"));
    let o = cloister(&["verify-gpu", &data("nvtrust/LICENSE")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not readable"));
    let o = cloister(&["verify-gpu", &ev, "--rim", "/nonexistent.xml"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn json_output_names_every_check() {
    let o = cloister(&[
        "verify-gpu",
        &data("attestation-sdk/hopper_evidence.json"),
        "--now",
        NOW,
        "--json",
        "--rim",
        &data("nvtrust/Driver_RIM_test_no_gpu.swidtag"),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v["gpus"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 8);
    assert_eq!(v["gpus"][0]["checks"][3]["status"], "unchecked");
    assert_eq!(v["ok"], false);
}
