//! `cloister run` and `cloister doctor` as a user runs them: `--dry-run` prints the QEMU
//! command for the image, a missing QEMU says how to install it, and `doctor` reports
//! KVM, TDX and QEMU without failing.

use std::process::Command;

fn fake_image() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cmdline"), "console=ttyS0 panic=-1").unwrap();
    std::fs::write(dir.path().join("vmlinuz"), b"not a kernel").unwrap();
    dir
}

#[test]
fn dry_run_prints_the_qemu_command_for_the_image() {
    let image = fake_image();
    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args([
            "run",
            "--dry-run",
            "--port",
            "18443:443",
            "--memory",
            "1536",
            "--image",
        ])
        .arg(image.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("qemu-system-x86_64 "), "{line}");
    assert!(
        line.contains(&format!("-kernel {}/vmlinuz", image.path().display())),
        "{line}"
    );
    assert!(line.contains("-append 'console=ttyS0 panic=-1'"), "{line}");
    assert!(line.contains("hostfwd=tcp:127.0.0.1:18443-:443"), "{line}");
    assert!(line.contains("-m 1536"), "{line}");
}

#[test]
fn dry_run_tdx_uses_the_given_firmware() {
    let image = fake_image();
    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args([
            "run",
            "--dry-run",
            "--tdx",
            "--firmware",
            "/fw/OVMF.fd",
            "--image",
        ])
        .arg(image.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.contains("-bios /fw/OVMF.fd"), "{line}");
    assert!(line.contains("kernel_irqchip=split"), "{line}");
    assert!(line.contains("tdx-guest"), "{line}");
}

#[test]
fn a_missing_qemu_says_how_to_install_it() {
    let image = fake_image();
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["run", "--image"])
        .arg(image.path())
        .env("PATH", empty.path())
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("qemu-system-x86_64"), "{stderr}");
    assert!(
        stderr.contains("apt-get install qemu-system-x86"),
        "{stderr}"
    );
}

#[test]
fn run_without_a_built_image_says_to_build_first() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["run", "--dry-run", "--image"])
        .arg(empty.path())
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cloister build"));
}

#[test]
fn doctor_reports_kvm_tdx_and_qemu() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["doctor", "--image"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for line in ["KVM:", "TDX:", "QEMU:", "=> this host"] {
        assert!(text.contains(line), "{text}");
    }
}

fn fake_simulated_image() -> tempfile::TempDir {
    let image = fake_image();
    std::fs::write(
        image.path().join("manifest.json"),
        r#"{"format":1,"tee":"simulated"}"#,
    )
    .unwrap();
    image
}

#[test]
fn a_simulated_image_gets_its_measurements_through_fw_cfg_and_a_warning() {
    let image = fake_simulated_image();
    let measurements = image.path().join("given.json");
    std::fs::write(&measurements, "{}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["run", "--dry-run", "--image"])
        .arg(image.path())
        .arg("--measurements")
        .arg(&measurements)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NOT confidential"), "{stderr}");
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.contains(&format!(
            "-fw_cfg name=opt/cloister/measurements.json,file={}",
            measurements.display()
        )),
        "{line}"
    );
}

#[test]
fn a_simulated_image_is_never_booted_as_a_td() {
    let image = fake_simulated_image();
    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args([
            "run",
            "--dry-run",
            "--tdx",
            "--firmware",
            "/fw/OVMF.fd",
            "--image",
        ])
        .arg(image.path())
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tee simulated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_production_image_gets_no_measurements_unless_given() {
    let image = fake_image();
    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["run", "--dry-run", "--image"])
        .arg(image.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8(out.stdout).unwrap().contains("-fw_cfg"));
}

#[test]
fn build_refuses_an_unknown_tee() {
    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["build", "--tee", "sgx"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("use tdx or simulated"), "{stderr}");
}
