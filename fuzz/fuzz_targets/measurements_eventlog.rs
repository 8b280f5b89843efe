//! Fuzz target: arbitrary bytes into the eventlog parser of `cloister-measurements`.
//! Run: `cd fuzz && cargo +nightly fuzz run measurements_eventlog`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cloister_measurements::fuzzing::eventlog(data);
});
