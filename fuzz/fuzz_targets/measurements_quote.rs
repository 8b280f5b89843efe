//! Fuzz target: arbitrary bytes into the quote parser of `cloister-measurements`.
//! Run: `cd fuzz && cargo +nightly fuzz run measurements_quote`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cloister_measurements::fuzzing::quote(data);
});
