//! Every JSON body web-ui accepts from a browser, including WebAuthn credentials, through
//! the one parser the handlers use. Must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cloister_web_ui::api::parse_everything(data);
});
