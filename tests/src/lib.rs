//! Shared helpers for the end-to-end tests in `tests/tests/`: one file per user-visible
//! flow (a QEMU boot, an ACME issuance against Pebble, a browser chat).
//!
//! - [`probe`]: what the test-only guest service `cloister-probe` observes and reports;
//! - [`http`]: a tiny blocking HTTP/1.0 client for talking to forwarded guest ports;
//! - [`serial`]: reading boot phases and panics out of a serial console log.
//!
//! Std only: the probe binary built from this crate runs inside the guest.

#![forbid(unsafe_code)]

pub mod http;
pub mod probe;
pub mod serial;
