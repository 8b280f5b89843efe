//! Fuzz target: arbitrary bytes as a GPU attestation report (SPDM 1.1 GET_MEASUREMENTS
//! request ‖ response) into `cloister-measurements`' parser and GPU verifier.
//! Run: `cd fuzz && cargo +nightly fuzz run gpu_spdm`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cloister_measurements::fuzzing::gpu_spdm(data);
});
