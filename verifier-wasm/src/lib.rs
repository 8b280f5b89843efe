//! The attestation verifier compiled to WebAssembly for the browser.
