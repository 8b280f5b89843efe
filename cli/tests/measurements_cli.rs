//! End-to-end tests of `cloister verify-quote`, `cloister eventlog` and `cloister measure`
//! on the public TDX test data in `measurements/tests/data`: the real binary, real files.

use std::path::PathBuf;
use std::process::Command;

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../measurements/tests/data/go-tdx-guest")
        .join(rel)
}

fn cloister(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(args)
        .output()
        .expect("run cloister")
}

const NOW: &str = "2023-07-01T01:00:00Z";

fn verify_v4(extra: &[&str]) -> std::process::Output {
    let quote = data("tdx_prod_quote_SPR_E4.dat");
    let collateral = data("collateral-v4");
    let mut args = vec![
        "verify-quote",
        quote.to_str().unwrap(),
        "--collateral",
        collateral.to_str().unwrap(),
        "--now",
        NOW,
    ];
    args.extend_from_slice(extra);
    cloister(&args)
}

fn verdict_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("verdict JSON on stdout")
}

#[test]
fn verify_quote_refuses_a_tcb_that_matches_no_level() {
    let out = verify_v4(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tcb_status"), "{stderr}");
    assert_eq!(verdict_json(&out)["tcb_status"], "NoMatchingTcbLevel");
}

#[test]
fn verify_quote_accepts_when_everything_matches() {
    let first = verify_v4(&["--accept-tcb-status", "NoMatchingTcbLevel"]);
    let v = verdict_json(&first);
    let td = &v["td"];
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("measurements.json");
    let m = serde_json::json!({
        "mrtd": td["mrtd"], "rtmr0": td["rtmrs"][0], "rtmr1": td["rtmrs"][1],
        "rtmr2": td["rtmrs"][2], "rtmr3": td["rtmrs"][3],
    });
    std::fs::write(&expected, m.to_string()).unwrap();
    let rd = td["report_data"].as_str().unwrap().to_owned();
    let out = verify_v4(&[
        "--accept-tcb-status",
        "NoMatchingTcbLevel",
        "--expected",
        expected.to_str().unwrap(),
        "--report-data",
        &rd,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One register off: non-zero exit, and the reason names the register.
    let mut wrong = m.clone();
    let mut rtmr2 = td["rtmrs"][2].as_str().unwrap().to_owned();
    let flipped = if rtmr2.starts_with('0') { "1" } else { "0" };
    rtmr2.replace_range(0..1, flipped);
    wrong["rtmr2"] = serde_json::Value::String(rtmr2);
    std::fs::write(&expected, wrong.to_string()).unwrap();
    let out = verify_v4(&[
        "--accept-tcb-status",
        "NoMatchingTcbLevel",
        "--expected",
        expected.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mismatch: rtmr2"), "{stderr}");

    // Wrong report data: non-zero exit naming report_data.
    let out = verify_v4(&[
        "--accept-tcb-status",
        "NoMatchingTcbLevel",
        "--report-data",
        "00ff",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mismatch: report_data"));
}

#[test]
fn verify_quote_fails_when_the_collateral_expired() {
    let quote = data("tdx_prod_quote_SPR_E4.dat");
    let collateral = data("collateral-v4");
    let out = cloister(&[
        "verify-quote",
        quote.to_str().unwrap(),
        "--collateral",
        collateral.to_str().unwrap(),
        "--now",
        "2053-01-01T00:00:00Z",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not verify"));
}

#[test]
fn eventlog_explains_the_ccel_log_and_matches_its_quote() {
    let log = data("ccel/ccel_data.dat");
    let table = data("ccel/ccel_table.dat");
    let quote = data("ccel/cos-113-tdx-quote.dat");
    let out = cloister(&[
        "eventlog",
        log.to_str().unwrap(),
        "--table",
        table.to_str().unwrap(),
        "--quote",
        quote.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("UEFI variable SecureBoot"), "{stdout}");
    assert!(stdout.contains("CCEL: type 2"));

    // Against another TD's quote the replay differs: non-zero exit, naming the registers.
    let other = data("tdx_prod_quote_SPR_E4.dat");
    let out = cloister(&[
        "eventlog",
        log.to_str().unwrap(),
        "--quote",
        other.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rtmr1: the log replays to"));
}

/// A PE image with headers only: enough for the Authenticode rules.
fn minimal_pe() -> Vec<u8> {
    let mut f = vec![0u8; 0x200];
    f[0..2].copy_from_slice(b"MZ");
    f[0x3c] = 0x80;
    f[0x80..0x84].copy_from_slice(b"PE\0\0");
    f[0x84 + 16] = 240;
    f[0x98..0x9a].copy_from_slice(&0x20bu16.to_le_bytes());
    f[0x98 + 60..0x98 + 64].copy_from_slice(&0x200u32.to_le_bytes());
    f
}

#[test]
fn measure_writes_registers_and_events_and_follows_the_cmdline() {
    let ovmf = std::env::var("CLOISTER_OVMF")
        .unwrap_or_else(|_| "/var/cache/cloister/ovmf/2025.02-8+deb13u1/OVMF.fd".to_owned());
    if !std::path::Path::new(&ovmf).exists() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "run measurements/scripts/fetch-ovmf.sh"
        );
        eprintln!("SKIPPED: no {ovmf}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image");
    std::fs::create_dir(&image).unwrap();
    std::fs::write(image.join("vmlinuz"), minimal_pe()).unwrap();
    std::fs::write(image.join("initramfs.cpio.zst"), vec![3u8; 10_000]).unwrap();
    std::fs::write(image.join("cmdline"), "console=ttyS0\n").unwrap();
    let acpi = dir.path().join("acpi");
    std::fs::create_dir(&acpi).unwrap();
    for (name, bytes) in [
        ("table-loader", &b"loader"[..]),
        ("rsdp", b"RSD PTR "),
        ("tables", b"DSDT"),
    ] {
        std::fs::write(acpi.join(name), bytes).unwrap();
    }
    let events = dir.path().join("events.json");
    std::fs::write(&events, r#"[{"name":"config","text":"x=1"}]"#).unwrap();
    let run = |out: &std::path::Path| {
        let o = cloister(&[
            "measure",
            "--image",
            image.to_str().unwrap(),
            "--ovmf",
            &ovmf,
            "--memory",
            "4G",
            "--cpus",
            "2",
            "--qemu",
            "10.1",
            "--acpi-tables",
            acpi.to_str().unwrap(),
            "--runtime-events",
            events.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(out).unwrap()).unwrap()
    };
    let first = run(&dir.path().join("a.json"));
    for key in ["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"] {
        let v = first[key].as_str().unwrap();
        assert_eq!(v.len(), 96, "{key}");
        assert_eq!(v, v.to_lowercase());
    }
    assert_eq!(first["events"]["rtmr0"].as_array().unwrap().len(), 13);
    assert_eq!(first["events"]["rtmr1"].as_array().unwrap().len(), 5);
    assert_eq!(first["events"]["rtmr3"].as_array().unwrap().len(), 1);

    std::fs::write(image.join("cmdline"), "console=ttyS0 quiet\n").unwrap();
    let second = run(&dir.path().join("b.json"));
    assert_ne!(first["rtmr2"], second["rtmr2"]);
    for key in ["mrtd", "rtmr0", "rtmr1", "rtmr3"] {
        assert_eq!(
            first[key], second[key],
            "{key} must not depend on the cmdline"
        );
    }
}
