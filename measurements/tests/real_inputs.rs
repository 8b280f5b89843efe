//! Measurements of real build inputs, checked against independent computations: the
//! reference OVMF (Debian trixie's ovmf 2025.02-8+deb13u1, fetched by
//! `measurements/scripts/fetch-ovmf.sh`), a real Debian kernel (checked with Google's
//! `authenticode` crate) and RTMR2 against `iconv` and `sha384sum`.
//!
//! The OVMF and kernel files are large downloads, so they are found through
//! `CLOISTER_OVMF` / `CLOISTER_KERNEL` or their cache paths. Where a file is missing the
//! test says so and passes, except under CI (`CI=true`), where it fails.

use std::path::PathBuf;
use std::process::Command;

use cloister_measurements::boot;
use cloister_measurements::pe::authenticode_sha384;
use cloister_measurements::register::sha384;
use cloister_measurements::tdvf::{PageOrder, SectionType, Tdvf};

const OVMF_DEFAULT: &str = "/var/cache/cloister/ovmf/2025.02-8+deb13u1/OVMF.fd";
const OVMF_SHA256: &str = "14954040cc754ade0c625ac3470ea46d4c14318b5b1396de4ef77090203d76db";

fn find(env: &str, default: &str) -> Option<Vec<u8>> {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(_) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED: {} not found (set {env})", path.display());
            None
        }
        Err(e) => panic!(
            "{}: {e}; run measurements/scripts/fetch-ovmf.sh",
            path.display()
        ),
    }
}

fn ovmf() -> Option<Vec<u8>> {
    let fw = find("CLOISTER_OVMF", OVMF_DEFAULT)?;
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&fw)), OVMF_SHA256);
    Some(fw)
}

/// The kernel the image pins (image/lock.toml), as the image engineer's fetch unpacks it.
fn kernel() -> Option<Vec<u8>> {
    let default = std::fs::read_dir("/var/cache/cloister/unpacked")
        .ok()
        .and_then(|dirs| {
            dirs.flatten()
                .flat_map(|d| {
                    std::fs::read_dir(d.path().join("boot"))
                        .into_iter()
                        .flatten()
                })
                .flatten()
                .map(|f| f.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
                })
        })
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/nonexistent/vmlinuz".to_owned());
    find("CLOISTER_KERNEL", &default)
}

#[test]
fn reference_ovmf_has_the_expected_tdvf_sections() {
    let Some(fw) = ovmf() else { return };
    let t = Tdvf::parse(&fw).unwrap();
    let kinds: Vec<_> = t.sections.iter().map(|s| s.section_type).collect();
    assert_eq!(
        kinds,
        [
            SectionType::Bfv,
            SectionType::Cfv,
            SectionType::TempMem,
            SectionType::TempMem,
            SectionType::TdHob,
            SectionType::TempMem
        ]
    );
    let bfv = t.section(SectionType::Bfv).unwrap();
    assert!(bfv.mr_extend(), "BFV is measured into MRTD");
    // The BFV is the end of the 4 MiB image, mapped to end at 4 GiB.
    assert_eq!(
        bfv.data_offset as usize + bfv.raw_data_size as usize,
        fw.len()
    );
    assert_eq!(bfv.memory_address + bfv.memory_data_size, 1 << 32);
    let cfv = t.section(SectionType::Cfv).unwrap();
    assert!(!cfv.mr_extend(), "the CFV goes to RTMR0, not MRTD");
    assert_eq!(cfv.data_offset, 0);
    assert_eq!(cfv.memory_address, 0xffc0_0000);
    assert_eq!(
        t.section(SectionType::TdHob).unwrap().memory_address,
        0x80_9000
    );
    for s in &t.sections {
        if matches!(s.section_type, SectionType::TdHob | SectionType::TempMem) {
            assert_eq!(s.raw_data_size, 0, "{s:?} has no bytes in the file");
            assert!(!s.mr_extend());
        }
    }
    // The two QEMU orders give different MRTDs.
    assert_ne!(
        t.mrtd(PageOrder::OnePass),
        t.mrtd(PageOrder::TwoPassPerSection)
    );
}

#[test]
fn real_kernel_authenticode_matches_an_independent_implementation() {
    let Some(k) = kernel() else { return };
    let pe = object::read::pe::PeFile64::parse(&*k).unwrap();
    let mut h = sha2::Sha384::default();
    authenticode::authenticode_digest(&pe, &mut h).unwrap();
    let theirs: [u8; 48] = sha2::Digest::finalize(h).into();
    assert_eq!(authenticode_sha384(&k).unwrap(), theirs);
    // Debian's kernel is signed: the digest is not the plain file hash.
    assert_ne!(theirs, sha384(&k));
}

fn shell_sha384(script: &str) -> [u8; 48] {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    hex::decode(text.split_whitespace().next().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn rtmr2_matches_iconv_and_sha384sum() {
    let dir = tempfile::tempdir().unwrap();
    let initrd: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let initrd_path = dir.path().join("initramfs.cpio.zst");
    std::fs::write(&initrd_path, &initrd).unwrap();
    let cmdline = "console=ttyS0 panic=-1 cloister.model=smollm2";
    let events = boot::rtmr2_events(cmdline, Some(&initrd)).unwrap();
    let rtmr2 = cloister_measurements::measurements::replay(&events);
    let cmdline_digest = shell_sha384(&format!(
        "printf '%s initrd=initrd\\0' '{cmdline}' | iconv -f UTF-8 -t UTF-16LE | sha384sum"
    ));
    let initrd_digest = shell_sha384(&format!("sha384sum {}", initrd_path.display()));
    // RTMR2 = extend(extend(0, cmdline), initrd), recomputed here with sha384sum too.
    let mut reg = vec![0u8; 48];
    reg.extend_from_slice(&cmdline_digest);
    let step1 = sha384(&reg);
    let mut reg = step1.to_vec();
    reg.extend_from_slice(&initrd_digest);
    assert_eq!(rtmr2, Some(sha384(&reg)));
    assert_eq!(events[0].digest, hex::encode(cmdline_digest));
}

#[test]
fn td_hob_of_the_reference_ovmf_lists_memory_as_qemu_does() {
    let Some(fw) = ovmf() else { return };
    let t = Tdvf::parse(&fw).unwrap();
    let ranges = |hob: &[u8]| -> Vec<(u32, u64, u64)> {
        hob[56..]
            .chunks(48)
            .map(|r| {
                assert_eq!(&r[0..4], &[3, 0, 48, 0]);
                let kind = u32::from_le_bytes(r[24..28].try_into().unwrap());
                let start = u64::from_le_bytes(r[32..40].try_into().unwrap());
                let len = u64::from_le_bytes(r[40..48].try_into().unwrap());
                (kind, start, len)
            })
            .collect()
    };
    const GIB: u64 = 1 << 30;
    let hob = boot::td_hob(&t, 4 * GIB).unwrap();
    // 0 = accepted system memory (TEMP_MEM, TD_HOB), 7 = unaccepted.
    assert_eq!(
        ranges(&hob),
        [
            (7, 0, 0x80_0000),
            (0, 0x80_0000, 0x6000),
            (7, 0x80_6000, 0x3000),
            (0, 0x80_9000, 0x2000),
            (0, 0x80_b000, 0x2000),
            (7, 0x80_d000, 0x4000),
            (0, 0x81_1000, 0xf000),
            (7, 0x82_0000, 2 * GIB - 0x82_0000),
            (7, 4 * GIB, 2 * GIB),
        ]
    );
    // PHIT: type 1, length 56, version 9, EfiEndOfHobList past the list and its end HOB.
    assert_eq!(&hob[0..4], &[1, 0, 56, 0]);
    assert_eq!(u32::from_le_bytes(hob[8..12].try_into().unwrap()), 9);
    let end = u64::from_le_bytes(hob[48..56].try_into().unwrap());
    assert_eq!(end, 0x80_9000 + hob.len() as u64 + 8);

    // Below 2.75 GiB there is no split at 2 GiB.
    let small = ranges(&boot::td_hob(&t, 2 * GIB).unwrap());
    assert_eq!(small.last(), Some(&(7, 0x82_0000, 2 * GIB - 0x82_0000)));
    assert_eq!(small.len(), 8);
    let mid = ranges(&boot::td_hob(&t, 3 * GIB).unwrap());
    assert_eq!(mid.last(), Some(&(7, 4 * GIB, GIB)));
}
