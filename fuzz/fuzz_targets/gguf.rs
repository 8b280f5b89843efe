//! Fuzz target: arbitrary bytes into model-runner's GGUF parser (model files are outside
//! bytes). Run: `cd fuzz && cargo +nightly fuzz run gguf`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cloister_model_runner::gguf::fuzz_parse(data);
});
