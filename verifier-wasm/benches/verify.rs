//! How long the attestation verifier takes natively, per bundle, for the figures in
//! docs/benchmarks.md, "The attested chat" (the browser's figure comes from tests/browser_verify.rs).
//!
//!   cargo bench -p cloister-verifier-wasm --bench verify
//!
//! Prints the median and the fastest of RUNS calls of `verify_json` (request parsing,
//! bundle decoding, quote and collateral verification, event-log replay, report data) for a
//! simulated bundle and for Intel's public production quote.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

const RUNS: usize = 200;

fn main() {
    let requests = common::request_set();
    println!("attestation verify, native, {RUNS} runs each");
    for name in ["simulated, accepted", "Intel production quote"] {
        let request = &requests.iter().find(|(n, _)| *n == name).unwrap().1;
        let mut times_us: Vec<f64> = (0..RUNS)
            .map(|_| {
                let started = Instant::now();
                std::hint::black_box(cloister_verifier_wasm::verify_json(std::hint::black_box(
                    request.as_bytes(),
                )));
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        times_us.sort_by(f64::total_cmp);
        println!(
            "{name:<24} {:>6} bytes  median {:>8.2} ms  fastest {:>8.2} ms",
            request.len(),
            times_us[RUNS / 2] / 1e3,
            times_us[0] / 1e3
        );
    }
}
