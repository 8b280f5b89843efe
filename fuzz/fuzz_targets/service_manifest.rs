//! Fuzz target: arbitrary text as a supervisor service manifest.
//! Run: `cd fuzz && cargo +nightly fuzz run service_manifest`.

#![no_main]

use std::path::Path;

use cloister_supervisor::ServiceManifest;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ServiceManifest::parse(Path::new("/etc/cloister/services/fuzz.toml"), text) {
        Ok(manifest) => assert_eq!(manifest.name, "fuzz"),
        Err(e) => {
            // The line named must exist in the text.
            if let Some(line) = e.line {
                assert!(line >= 1 && line <= text.lines().count().max(1) + 1);
            }
            let _ = e.to_string();
        }
    }
});
