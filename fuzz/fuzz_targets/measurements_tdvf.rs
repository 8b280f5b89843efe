//! Fuzz target: arbitrary bytes into the tdvf parser of `cloister-measurements`.
//! Run: `cd fuzz && cargo +nightly fuzz run measurements_tdvf`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cloister_measurements::fuzzing::tdvf(data);
});
