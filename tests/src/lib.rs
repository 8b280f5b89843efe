//! Shared helpers for the end-to-end tests in `tests/tests/`: one file per user-visible flow (a QEMU boot, an ACME issuance against Pebble, a browser chat).
