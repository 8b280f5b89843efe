//! Fuzz target: arbitrary datagrams into the supervisor's sd_notify parser.
//! Run: `cd fuzz && cargo +nightly fuzz run notify_datagram`.

#![no_main]

use cloister_supervisor::notify::{
    NOTIFY_DATAGRAM_MAX_BYTES, NotifyMessage, STATUS_TEXT_MAX_BYTES, parse_datagram,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match parse_datagram(data) {
        Ok(messages) => {
            assert!(data.len() <= NOTIFY_DATAGRAM_MAX_BYTES);
            assert!(messages.len() <= data.len());
            for message in messages {
                if let NotifyMessage::Status(text) = message {
                    assert!(text.len() <= STATUS_TEXT_MAX_BYTES);
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
