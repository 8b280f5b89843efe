//! The server's opener of sealed chat requests (header, HPKE open, inner JSON, replay
//! check) on arbitrary bytes. Must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cloister_protocol::fuzzing::open_request(data);
});
