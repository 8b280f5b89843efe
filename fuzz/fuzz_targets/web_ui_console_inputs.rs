//! What the owner's console reads from other parts: model-runner's Prometheus text and the
//! supervisor's JSON answers. Must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cloister_web_ui::console::parse_everything(data);
});
