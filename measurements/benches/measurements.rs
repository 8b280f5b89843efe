//! Benchmarks of the two things a verifier does: measuring a whole image (a 4 MiB OVMF, a
//! 12 MiB kernel, a 100 MiB initrd) and verifying one quote with its collateral. Prints
//! figures and, as the anchor, the ratio to plain SHA-384 over the same bytes (the floor
//! for any measurer). Run: `cargo bench -p cloister-measurements --bench measurements`.

use std::time::{Duration, Instant};

use cloister_measurements::boot::{self, AcpiTables, BootInputs, Edk2Profile, QemuProfile};
use cloister_measurements::quote::{Collateral, CollateralFiles, verify};
use cloister_measurements::register::sha384;

const MIB: usize = 1024 * 1024;

fn pseudo_random(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A PE32+ kernel of `len` bytes: headers, then one section holding the rest.
fn kernel(len: usize) -> Vec<u8> {
    let mut f = pseudo_random(len, 7);
    f[..0x400].fill(0);
    f[0..2].copy_from_slice(b"MZ");
    f[0x3c] = 0x80;
    f[0x80..0x84].copy_from_slice(b"PE\0\0");
    f[0x86..0x88].copy_from_slice(&1u16.to_le_bytes());
    f[0x84 + 16] = 240;
    let opt = 0x98;
    f[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
    f[opt + 60..opt + 64].copy_from_slice(&0x400u32.to_le_bytes());
    f[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
    let s = opt + 240;
    f[s + 16..s + 20].copy_from_slice(&((len - 0x400) as u32).to_le_bytes());
    f[s + 20..s + 24].copy_from_slice(&0x400u32.to_le_bytes());
    f
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let ovmf_path = std::env::var("CLOISTER_OVMF")
        .unwrap_or_else(|_| "/var/cache/cloister/ovmf/2025.02-8+deb13u1/OVMF.fd".to_owned());
    let firmware = std::fs::read(&ovmf_path).unwrap_or_else(|e| {
        panic!("{ovmf_path}: {e}; run measurements/scripts/fetch-ovmf.sh first")
    });
    let kernel = kernel(12 * MIB);
    let initrd = pseudo_random(100 * MIB, 3);
    let (loader, rsdp, tables) = (vec![1u8; 4096], vec![2u8; 36], pseudo_random(128 * 1024, 5));
    let inputs = BootInputs {
        firmware: &firmware,
        kernel: &kernel,
        initrd: Some(&initrd),
        cmdline: "console=ttyS0 panic=-1",
        memory_size_bytes: 4 << 30,
        cpus: 2,
        qemu: QemuProfile::Upstream10_1,
        edk2: Edk2Profile::Stable202502,
        acpi: Some(AcpiTables {
            table_loader: &loader,
            rsdp: &rsdp,
            tables: &tables,
        }),
        runtime_events: &[],
    };
    let measure = best_of(5, || boot::measure(&inputs).map(|m| m.rtmr2));
    let total = firmware.len() + kernel.len() + initrd.len();
    let floor = best_of(5, || (sha384(&firmware), sha384(&kernel), sha384(&initrd)));
    println!(
        "measure whole image ({} MiB OVMF, {} MiB kernel, {} MiB initrd): {:.1} ms; plain SHA-384 of the same {} MiB: {:.1} ms; ratio {:.2}",
        firmware.len() / MIB,
        kernel.len() / MIB,
        initrd.len() / MIB,
        measure.as_secs_f64() * 1e3,
        total / MIB,
        floor.as_secs_f64() * 1e3,
        measure.as_secs_f64() / floor.as_secs_f64()
    );

    let quote = include_bytes!("../tests/data/go-tdx-guest/tdx_prod_quote_SPR_E4.dat");
    let files = CollateralFiles {
        tcb_info: include_bytes!("../tests/data/go-tdx-guest/collateral-v4/tcb_info.json"),
        qe_identity: include_bytes!("../tests/data/go-tdx-guest/collateral-v4/qe_identity.json"),
        pck_crl: include_bytes!("../tests/data/go-tdx-guest/collateral-v4/pck_crl.der"),
        root_ca_crl: include_bytes!("../tests/data/go-tdx-guest/collateral-v4/root_ca_crl.der"),
        pck_crl_issuer_chain: include_bytes!(
            "../tests/data/go-tdx-guest/collateral-v4/pck_crl_issuer_chain.pem"
        ),
        tcb_info_issuer_chain: include_bytes!(
            "../tests/data/go-tdx-guest/collateral-v4/tcb_info_issuer_chain.pem"
        ),
        qe_identity_issuer_chain: include_bytes!(
            "../tests/data/go-tdx-guest/collateral-v4/qe_identity_issuer_chain.pem"
        ),
    };
    let now = 1_688_173_200;
    let collateral = Collateral::from_files(files).expect("collateral");
    assert!(verify(quote, &collateral, now).is_ok());
    let runs = 50;
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(verify(quote, &collateral, now).is_ok());
            t.elapsed()
        })
        .collect();
    times.sort();
    let (best, median) = (times[0], times[runs / 2]);
    let with_parse = best_of(20, || {
        Collateral::from_files(files).map(|c| verify(quote, &c, now).is_ok())
    });
    println!(
        "verify one quote with its collateral: best {:.2} ms, median {:.2} ms (of {runs}); with collateral parsing: best {:.2} ms (of 20)",
        best.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        with_parse.as_secs_f64() * 1e3
    );
}
