//! The client-side attestation verifier on an arbitrary bundle body, as a hostile box could
//! serve it: every check must come back as a report, never a panic.
#![no_main]

use cloister_measurements::attestation::{Inputs, verify};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let report = verify(&Inputs {
        bundle_json: data,
        expected: None,
        nonce_sent: &[0x5a; 32],
        observed_tls_spki_sha256: Some(&[0xa5; 32]),
        now_unix_s: 1_790_000_000,
        accept_simulated: true,
    });
    // Without expected measurements the register checks fail, so no bundle passes.
    assert!(!report.ok);
});
