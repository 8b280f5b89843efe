//! Fuzz target: arbitrary datagrams into init's DHCP parser, lease and resolver handling.
//! Run: `cd fuzz && cargo +nightly fuzz run dhcp_packet`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cloister_init::fuzzing::dhcp_packet(data);
});
