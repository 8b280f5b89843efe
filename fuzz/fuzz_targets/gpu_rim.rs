//! Fuzz target: arbitrary bytes as an NVIDIA reference manifest (signed SWID XML) into the
//! RIM parser, canonicalizer and signature check of `cloister-measurements`.
//! Run: `cd fuzz && cargo +nightly fuzz run gpu_rim`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cloister_measurements::fuzzing::gpu_rim(data);
});
