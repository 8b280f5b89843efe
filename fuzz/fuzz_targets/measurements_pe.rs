//! Fuzz target: arbitrary bytes into the pe parser of `cloister-measurements`.
//! Run: `cd fuzz && cargo +nightly fuzz run measurements_pe`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cloister_measurements::fuzzing::pe(data);
});
