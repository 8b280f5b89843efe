//! Every JSON body web-ui accepts from a browser, including WebAuthn credentials, through
//! the one parser the handlers use, and the connection watcher's reading of raw client bytes
//! (HTTP/2 frame headers) and answer heads. Must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cloister_web_ui::api::parse_everything(data);
    cloister_web_ui::server::observe_connection_bytes(data);
});
