//! Shared helpers for the end-to-end tests in `tests/tests/`: one file per user-visible
//! flow (a QEMU boot, an ACME issuance against Pebble, a browser chat).
//!
//! - [`probe`]: what the test-only guest service `cloister-probe` observes and reports;
//! - `http` (host side only): plain HTTP to forwarded guest ports, through the shared client;
//! - [`serial`]: reading boot phases and panics out of a serial console log.
//!
//! Std only in the guest: the probe binary built from this crate runs there (musl), and the
//! one module with a dependency, `http`, is built only for the host.

#![forbid(unsafe_code)]

#[cfg(not(target_env = "musl"))]
pub mod http;
pub mod probe;
pub mod serial;

use std::path::{Path, PathBuf};

/// The workspace's root folder (the tests crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies in the workspace")
        .to_path_buf()
}

/// The target folder the image tests build guest binaries in, shared so each is compiled
/// once: `$CLOISTER_GUEST_TARGET_DIR` (scripts/test.sh sets it to the folder of its own
/// image build), else `target-guest` under the download cache `cache`.
pub fn guest_target_dir(cache: &Path) -> PathBuf {
    std::env::var_os("CLOISTER_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("target-guest"))
}

/// A free TCP port on 127.0.0.1 (bound, then released: a test forwards it to the guest).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("the loopback interface takes a listener")
        .port()
}

/// A child process (QEMU) killed when the test ends, however it ends.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
