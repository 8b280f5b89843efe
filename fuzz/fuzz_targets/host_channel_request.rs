//! Fuzz target: arbitrary bytes from the host into the box's host-channel (vsock) parser and
//! connection loop: no panic, every answer one bounded line, nothing but the three requests.
//! Run: `cd fuzz && cargo +nightly fuzz run host_channel_request`.

#![no_main]

use std::io::{Cursor, Read, Write};

use cloister_supervisor::host_channel::{
    HOST_REQUEST_LINE_MAX_BYTES, HOST_REQUESTS_PER_CONNECTION_MAX, HostRequest, HostResponse,
    parse_host_request, serve_host_connection,
};

struct Duplex<'a> {
    input: Cursor<&'a [u8]>,
    output: Vec<u8>,
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_host_request(data) {
        assert!(data.len() <= HOST_REQUEST_LINE_MAX_BYTES);
        assert!(matches!(
            request,
            HostRequest::Status | HostRequest::Measurements | HostRequest::Poweroff
        ));
    }
    let mut stream = Duplex {
        input: Cursor::new(data),
        output: Vec::new(),
    };
    let mut asked = 0;
    serve_host_connection(&mut stream, |_| {
        asked += 1;
        HostResponse::ok()
    });
    assert!(asked <= HOST_REQUESTS_PER_CONNECTION_MAX);
    let answers = stream
        .output
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert!(answers <= asked + 1);
});
