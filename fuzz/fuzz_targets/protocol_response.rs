//! The client's reader of sealed response streams (response nonce, chunk framing, varints,
//! final marker) on arbitrary bytes pushed in arbitrary pieces. Must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cloister_protocol::fuzzing::read_response(data);
});
