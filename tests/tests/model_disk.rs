//! Model disks end to end, with the real image under QEMU (TCG): the weights live on a
//! dm-verity disk whose root hash is on the (measured) kernel command line.
//!
//! - The measurements: the image's disks match its command line (`cloister measure`'s
//!   check), and a wrong root hash on the command line changes RTMR2 and nothing else.
//! - Boot 1: a decoy disk comes first on the bus, the model disk second. init finds the
//!   model by its virtio serial, maps it with dm-verity, and model-runner loads from the
//!   mapping (web-ui starts only once model-runner is ready).
//! - Boot 2: a copy of the disk with one byte flipped in the middle of the weights, and a
//!   second disk listed with a wrong root hash. init refuses to map the second (its first
//!   block does not verify); the kernel reports the corrupt block of the first, and
//!   model-runner exits with its clear message: no panic, and web-ui never starts, so no
//!   answer comes from the corrupt weights.
//!
//! Uses the image scripts/test.sh builds (`$CLOISTER_TEST_IMAGE`), else builds one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cloister_image::build::{self, BuildOptions, Manifest, TeeChoice};
use cloister_image::progress::Progress;
use cloister_image::qemu::{self, Accelerator, Console, Drive, FwCfgFile, RunSettings};
use cloister_measurements::Measurements;
use cloister_tests::{KillOnDrop, serial};

/// Guest memory and vCPUs: `cloister run`'s defaults.
const MEMORY_MIB: u32 = 2048;
const CPUS: u32 = 2;
/// From QEMU's start to web-ui's readiness: about a minute under TCG here.
const READY_DEADLINE_S: u64 = 480;
/// web-ui prints this once it runs, which it does only after model-runner is ready.
const WEB_UI_STARTED: &str = "web-ui: owner setup code (one use): ";
/// model-runner's message when a page of the model does not read
/// (cloister_model_runner::mmap::MODEL_READ_FAILED_MESSAGE).
const MODEL_READ_FAILED: &str = "model-runner: FATAL: a page of the model could not be read";
/// How long boot 2 is watched after model-runner failed, for a web-ui that must not start.
const AFTER_FAILURE_S: u64 = 20;

/// Prints the guest's serial console when the test fails.
struct SerialOnFailure(PathBuf);

impl Drop for SerialOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("serial log ({}):\n{text}", self.0.display());
        }
    }
}

/// The image scripts/test.sh built, or one built here into `scratch`.
fn image(scratch: &Path) -> PathBuf {
    if let Some(image) = std::env::var_os("CLOISTER_TEST_IMAGE") {
        return PathBuf::from(image);
    }
    let image = scratch.join("image");
    let mut opts = BuildOptions::new(cloister_tests::workspace_root(), &image);
    opts.tee = TeeChoice::Simulated;
    opts.target_dir = Some(cloister_tests::guest_target_dir(&build::default_cache_dir()));
    opts.progress = Progress::stderr();
    build::build(&opts).expect("the simulated image builds");
    image
}

fn manifest(image: &Path) -> Manifest {
    serde_json::from_slice(&std::fs::read(image.join(build::MANIFEST)).unwrap()).unwrap()
}

/// Boots as `cloister run` does: the expected measurements through fw_cfg (web-ui under
/// the simulated TEE refuses to start without them), the given disks and command line.
fn boot(
    image: &Path,
    measurements: &Path,
    cmdline: &str,
    drives: Vec<Drive>,
    log: &Path,
) -> KillOnDrop {
    let settings = RunSettings {
        image: image.to_path_buf(),
        memory_mib: MEMORY_MIB,
        cpus: CPUS,
        ports: Vec::new(),
        accelerator: Accelerator::Tcg,
        console: Console::File(log.to_path_buf()),
        cmdline: cmdline.to_owned(),
        tdx: None,
        fw_cfg: vec![FwCfgFile {
            name: qemu::MEASUREMENTS_FW_CFG_NAME.into(),
            file: measurements.to_path_buf(),
        }],
        drives,
    };
    KillOnDrop(
        Command::new(qemu::find_qemu().expect("QEMU is needed: apt-get install qemu-system-x86"))
            .args(qemu::command_line(&settings))
            .args(["-monitor", "none"])
            .stdin(Stdio::null())
            .spawn()
            .expect("QEMU starts"),
    )
}

/// Waits until `done` holds for the serial log; panics on a guest panic, an early QEMU
/// exit or the deadline. Returns the log.
fn wait_for(vm: &mut KillOnDrop, log: &Path, what: &str, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if done(&text) {
            return text;
        }
        if let Some(line) = serial::first_panic(&text) {
            panic!("the guest panicked: {line}");
        }
        if let Some(status) = vm.0.try_wait().unwrap() {
            panic!("QEMU exited ({status}) before {what}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(READY_DEADLINE_S),
            "no {what} {READY_DEADLINE_S} s after QEMU started"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn measure(image: &Path, firmware: &Path) -> Measurements {
    let json = cloister_image::expected::measurements_json(image, firmware, MEMORY_MIB, CPUS)
        .expect("the image measures");
    serde_json::from_str(&json).unwrap()
}

/// The root with its first hex digit changed.
fn wrong_root(root: &str) -> String {
    let first = if root.starts_with('0') { '1' } else { '0' };
    format!("{first}{}", &root[1..])
}

#[test]
fn a_model_disk_is_found_by_serial_verified_and_fails_closed_when_tampered() {
    let scratch = tempfile::tempdir().unwrap();
    let image = image(scratch.path());
    let manifest = manifest(&image);
    let [disk] = manifest.model_disks.as_slice() else {
        panic!(
            "the test image has one model disk: {:?}",
            manifest.model_disks
        );
    };
    let cmdline = qemu::read_cmdline(&image).unwrap();
    let option = build::model_cmdline_option(disk);
    assert!(cmdline.split(' ').any(|w| w == option), "{cmdline}");
    let initramfs = std::fs::metadata(image.join(build::INITRAMFS))
        .unwrap()
        .len();
    assert!(
        initramfs < disk.verity.data_bytes,
        "the weights ({} bytes) are not in the initramfs ({initramfs} bytes)",
        disk.verity.data_bytes
    );

    // Measurements: the disks match the command line, whose root hash RTMR2 covers.
    build::verify_model_disks(&image, &cmdline).expect("the image's disks match its cmdline");
    let wrong = cmdline.replace(&disk.verity.root, &wrong_root(&disk.verity.root));
    assert!(build::verify_model_disks(&image, &wrong).is_err());
    let firmware = build::tdvf(
        &cloister_tests::workspace_root(),
        &build::default_cache_dir(),
        &Progress::stderr(),
    )
    .expect("the pinned OVMF");
    let tampered_image = scratch.path().join("wrong-root-image");
    std::fs::create_dir(&tampered_image).unwrap();
    for file in [build::VMLINUZ, build::INITRAMFS] {
        std::fs::copy(image.join(file), tampered_image.join(file)).unwrap();
    }
    std::fs::write(tampered_image.join(build::CMDLINE), &wrong).unwrap();
    let (good, bad) = (
        measure(&image, &firmware),
        measure(&tampered_image, &firmware),
    );
    assert_ne!(
        good.rtmr2, bad.rtmr2,
        "the root hash is measured into RTMR2"
    );
    assert_eq!(
        (good.mrtd, good.rtmr0, good.rtmr1),
        (bad.mrtd, bad.rtmr0, bad.rtmr1)
    );
    let measurements = scratch.path().join("measurements.json");
    std::fs::write(
        &measurements,
        cloister_image::expected::measurements_json(&image, &firmware, MEMORY_MIB, CPUS)
            .expect("the image measures"),
    )
    .unwrap();

    // Boot 1: a decoy disk first, the model disk second; found by serial.
    let decoy = scratch.path().join("decoy.img");
    std::fs::write(&decoy, vec![0u8; 1 << 20]).unwrap();
    let model_disk = image.join(&disk.file);
    let log = scratch.path().join("serial-1.log");
    let _on_failure = SerialOnFailure(log.clone());
    let booted = Instant::now();
    let mut vm = boot(
        &image,
        &measurements,
        &cmdline,
        vec![
            Drive {
                file: decoy.clone(),
                serial: "cloister-decoy".into(),
                read_only: true,
            },
            Drive {
                file: model_disk.clone(),
                serial: disk.serial.clone(),
                read_only: true,
            },
        ],
        &log,
    );
    let text = wait_for(&mut vm, &log, "web-ui start", |t| {
        t.contains(WEB_UI_STARTED)
    });
    eprintln!("boot 1: web-ui started {:?} after QEMU", booted.elapsed());
    drop(vm);
    let mapped = format!(
        "init: model disk {} verified on vdb (/dev/mapper/{})",
        disk.name, disk.name
    );
    assert!(text.contains(&mapped), "expected {mapped:?}");
    assert!(!text.contains("NOT mapped"));
    assert!(!text.contains(MODEL_READ_FAILED));

    // Boot 2: one flipped byte in the middle of the weights, and a wrong root hash.
    let flipped = scratch.path().join("flipped.img");
    std::fs::copy(&model_disk, &flipped).unwrap();
    let mut bytes = std::fs::read(&flipped).unwrap();
    let at = (disk.verity.data_bytes / 2) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&flipped, &bytes).unwrap();
    drop(bytes);
    let second = format!(
        "cloister.model=wrong-root:{}:{}",
        disk.verity.data_bytes,
        wrong_root(&disk.verity.root)
    );
    let log = scratch.path().join("serial-2.log");
    let _on_failure = SerialOnFailure(log.clone());
    let mut vm = boot(
        &image,
        &measurements,
        &format!("{cmdline} {second}"),
        vec![
            Drive {
                file: flipped,
                serial: disk.serial.clone(),
                read_only: true,
            },
            Drive {
                file: model_disk,
                serial: "cloister-model-1".into(),
                read_only: true,
            },
        ],
        &log,
    );
    wait_for(&mut vm, &log, "model-runner's failure", |t| {
        t.contains(MODEL_READ_FAILED)
    });
    std::thread::sleep(Duration::from_secs(AFTER_FAILURE_S));
    let text = std::fs::read_to_string(&log).unwrap();
    drop(vm);
    assert!(
        text.contains(
            "init: model disk wrong-root (cloister-model-1) NOT mapped: its first block does not verify"
        ),
        "a wrong root hash fails the mapping"
    );
    assert!(
        text.contains(&format!("init: model disk {} verified", disk.name)),
        "the flipped byte is not in block 0, so the early check passes"
    );
    assert!(
        text.contains("is corrupted"),
        "the kernel's dm-verity reports the corrupt block"
    );
    assert!(
        !text.contains(WEB_UI_STARTED),
        "web-ui never starts: nothing answers from corrupt weights"
    );
    assert!(!text.contains("panicked"), "a clean exit, not a panic");
}
