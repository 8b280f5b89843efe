//! Benchmark: verifying one GPU's evidence natively (report signature, the 5-certificate
//! chain to the pinned root, FWID, nonce, mode, and the VBIOS RIM: XML-DSig over C14N 1.1,
//! its 4-certificate signer chain and the measurement match). Prints the time per GPU, the
//! ratio to the 20 ms goal, and, as the anchor, the ratio to one bare ECDSA P-384
//! verification (the floor: a full check does 1 + 4 + 1 + 4 of them, plus parsing).
//! Run: `cargo bench -p cloister-measurements --bench gpu`.

use std::time::{Duration, Instant};

use cloister_measurements::gpu::{self, Evidence, Inputs, Rim, cert};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/nvidia");

fn read(path: &str) -> Vec<u8> {
    std::fs::read(format!("{DATA}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let report_hex = String::from_utf8(read("attestation-sdk/sample_hopperAttestationReport.txt"))
        .expect("text");
    let evidence = [Evidence {
        arch: "HOPPER".to_owned(),
        report: hex::decode(report_hex.trim()).expect("hex"),
        cert_chain: read("attestation-sdk/sample_hopperCertChain.txt"),
    }];
    let rims = [read("nvtrust/1010_0200_882_96005E0001_PROD.swidtag")];
    let nonce = evidence[0].report[4..36].to_vec();
    let inputs = Inputs {
        evidence: &evidence,
        nonce: Some(&nonce),
        rims: &rims,
        expected_driver: Some("535.86.09"),
        crls: &[],
        allow_stale_revocation: false,
        now_unix_s: 1_717_200_000, // 2024-06-01, inside the RIM signer's validity
    };
    // The outcome is checked once, so that the figure is for a real verification.
    let outcome = gpu::verify(&inputs);
    let sig = outcome.gpus[0]
        .check("gpu_report_signature")
        .expect("check");
    assert_eq!(sig.status, gpu::Status::Pass);
    let m = outcome.gpus[0].check("gpu_measurements").expect("check");
    assert!(m.detail.contains("VBIOS RIM signed by"), "{}", m.detail);

    let runs = 30;
    let full = best_of(runs, || gpu::verify(&inputs));
    let no_rim = best_of(runs, || {
        gpu::verify(&Inputs {
            rims: &[],
            ..inputs
        })
    });
    let rim = best_of(runs, || {
        Rim::parse(&rims[0])
            .expect("rim")
            .verify(&gpu::rim_root(), inputs.now_unix_s)
    });
    let chain = cert::parse_pem_chain(&evidence[0].cert_chain).expect("chain");
    let key = chain[0].p384_key().expect("key");
    let report = gpu::SpdmReport::parse(&evidence[0].report).expect("report");
    let one_ecdsa = best_of(runs * 3, || {
        cert::verify_raw_p384_sha384(&key, report.signed_bytes(), &report.signature)
    });
    println!("GPU evidence verification, native, best of {runs}:");
    println!(
        "  one GPU, report + chain + VBIOS RIM: {:8.3} ms  ({:.2}x the 20 ms goal; {:.1}x one ECDSA P-384 verification)",
        ms(full),
        ms(full) / 20.0,
        full.as_secs_f64() / one_ecdsa.as_secs_f64()
    );
    println!(
        "  one GPU, report + chain, no RIM:     {:8.3} ms  ({:.1}x one ECDSA P-384 verification)",
        ms(no_rim),
        no_rim.as_secs_f64() / one_ecdsa.as_secs_f64()
    );
    println!("  one RIM alone (parse, C14N, chain):  {:8.3} ms", ms(rim));
    println!(
        "  one ECDSA P-384 verification:        {:8.3} ms",
        ms(one_ecdsa)
    );
}
