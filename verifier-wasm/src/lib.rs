//! The attestation verifier compiled to WebAssembly for the browser: the same
//! `cloister_measurements::attestation::verify` that `cloister verify` runs, behind a plain C
//! ABI (no wasm-bindgen, no imports) that `web-ui/assets/verify.js` calls.
//!
//! ABI (all integers are wasm32 `i32`, memory is the module's exported `memory`):
//! - `alloc(len) -> ptr`: `len` bytes the caller may write into;
//! - `dealloc(ptr, len)`: gives back what `alloc` or `verify` returned;
//! - `verify(ptr, len) -> ptr`: reads `len` bytes of request JSON at `ptr` (which it does not
//!   free) and returns a buffer that starts with the u32 little-endian length `n` of the
//!   result JSON, then its `n` bytes; the caller frees it with `dealloc(ptr, 4 + n)`.
//!
//! Request: `{"bundle": <the /attestation body>, "expected": <measurements.json or null>,
//! "nonce": "<hex, as sent>", "now": <unix seconds>, "accept_simulated": <bool>}`.
//! Result: the `attestation::Report` as JSON, or `{"ok": false, "error": "...", "checks": []}`
//! when the request itself cannot be read.
//!
//! This crate must never decide anything itself (every rule lives in cloister-measurements),
//! never panic on its input and never read a clock: `now` comes from the caller.

#![deny(unsafe_code)]

use cloister_measurements::Measurements;
use cloister_measurements::attestation::{self, Inputs};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Largest request accepted: the bundle's own limit plus room for measurements.json.
pub const REQUEST_SIZE_MAX_BYTES: usize = attestation::BUNDLE_SIZE_MAX_BYTES + 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request<'a> {
    #[serde(borrow)]
    bundle: &'a RawValue,
    #[serde(default)]
    expected: Option<Measurements>,
    nonce: String,
    now: u64,
    #[serde(default)]
    accept_simulated: bool,
}

fn refusal(error: String) -> String {
    serde_json::json!({ "ok": false, "error": error, "checks": [] }).to_string()
}

/// Verifies one request (JSON, as in the module documentation) and returns the result JSON.
pub fn verify_json(request: &[u8]) -> String {
    if request.len() > REQUEST_SIZE_MAX_BYTES {
        return refusal(format!(
            "the request is {} bytes, more than the {REQUEST_SIZE_MAX_BYTES} accepted",
            request.len()
        ));
    }
    let request: Request<'_> = match serde_json::from_slice(request) {
        Ok(r) => r,
        Err(e) => return refusal(format!("the request is not readable: {e}")),
    };
    let nonce = match hex::decode(&request.nonce) {
        Ok(n) => n,
        Err(e) => return refusal(format!("the nonce is not hex: {e}")),
    };
    let report = attestation::verify(&Inputs {
        bundle_json: request.bundle.get().as_bytes(),
        expected: request.expected.as_ref(),
        nonce_sent: &nonce,
        observed_tls_spki_sha256: None,
        now_unix_s: request.now,
        accept_simulated: request.accept_simulated,
    });
    serde_json::to_string(&report)
        .unwrap_or_else(|e| refusal(format!("the result cannot be written: {e}")))
}

/// The exported functions. Unmangled only in the wasm build, so that native tests can call
/// them as plain Rust without their names meeting the C library's.
#[allow(unsafe_code)]
pub mod abi {
    use std::alloc::Layout;

    fn layout(len: usize) -> Option<Layout> {
        Layout::array::<u8>(len).ok().filter(|l| l.size() > 0)
    }

    /// `len` writable bytes (a dangling, never-read pointer for 0; null if out of memory).
    #[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
    pub extern "C" fn alloc(len: usize) -> *mut u8 {
        match layout(len) {
            // SAFETY: the layout has a non-zero size, as `std::alloc::alloc` requires.
            Some(l) => unsafe { std::alloc::alloc(l) },
            None => std::ptr::NonNull::dangling().as_ptr(),
        }
    }

    /// Frees a buffer from [`alloc`] or [`verify`].
    ///
    /// # Safety
    /// `ptr` must come from `alloc(len)` (or be a `verify` result of `4 + n` bytes, freed
    /// with that `len`), and must not be used afterwards.
    #[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
    pub unsafe extern "C" fn dealloc(ptr: *mut u8, len: usize) {
        if let Some(l) = layout(len)
            && !ptr.is_null()
        {
            // SAFETY: the caller promises `ptr` came from `alloc` with this same length, so
            // it was allocated with this layout.
            unsafe { std::alloc::dealloc(ptr, l) }
        }
    }

    /// Verifies the request JSON at `ptr` (`len` bytes) and returns the length-prefixed
    /// result (null only if memory ran out).
    ///
    /// # Safety
    /// `ptr` must point at `len` initialised bytes (from [`alloc`]); they are only read.
    #[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
    pub unsafe extern "C" fn verify(ptr: *const u8, len: usize) -> *mut u8 {
        let request: &[u8] = if len == 0 || ptr.is_null() {
            &[]
        } else {
            // SAFETY: the caller promises `len` initialised bytes at `ptr`, which nothing
            // writes while we read them.
            unsafe { std::slice::from_raw_parts(ptr, len) }
        };
        let result = super::verify_json(request);
        let Ok(n) = u32::try_from(result.len()) else {
            return std::ptr::null_mut();
        };
        let total = result.len() + 4;
        let out = alloc(total);
        if out.is_null() {
            return out;
        }
        // SAFETY: `out` holds `total` writable bytes from `alloc`; the two copies fill
        // exactly `4 + n` of them and do not overlap `result`.
        unsafe {
            std::ptr::copy_nonoverlapping(n.to_le_bytes().as_ptr(), out, 4);
            std::ptr::copy_nonoverlapping(result.as_ptr(), out.add(4), result.len());
        }
        out
    }
}
