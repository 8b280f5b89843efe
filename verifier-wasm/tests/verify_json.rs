//! The wasm entry point, run natively: its result is exactly the measurements crate's report,
//! the C ABI round-trips it, and a request it cannot read is refused, not panicked on.

mod common;

use cloister_measurements::attestation::{self, Inputs};
use cloister_verifier_wasm::{abi, verify_json};
use common::*;

#[test]
fn the_result_is_the_measurements_report_as_json() {
    let nonce = [0x42u8; 32];
    let bundle = simulated_bundle(&simulated_tee(1), &SPKI, &nonce);
    let expected = measurements(1);
    let ours = verify_json(request(&bundle, Some(&expected), &nonce, NOW_2026, true).as_bytes());
    let report = attestation::verify(&Inputs {
        bundle_json: &bundle,
        expected: Some(&expected),
        nonce_sent: &nonce,
        observed_tls_spki_sha256: None,
        now_unix_s: NOW_2026,
        accept_simulated: true,
    });
    assert!(report.ok);
    assert_eq!(ours, serde_json::to_string(&report).unwrap());
}

#[test]
fn every_request_of_the_set_gives_the_outcome_it_is_named_for() {
    for (name, request) in request_set() {
        let result: serde_json::Value = serde_json::from_str(&verify_json(request.as_bytes()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let failed: Vec<&str> = result["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["ok"] == false)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        let want: &[&str] = match name {
            "simulated, accepted" => &[],
            "simulated, not accepted" => &["quote_signature", "tcb_status"],
            "simulated, another nonce sent" => &["report_data", "nonce"],
            "simulated, wrong rtmr1" => &["rtmr1"],
            "simulated, no expected measurements" => &["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"],
            "simulated debug TD" => &["debug_off"],
            // Signed by Intel, but no TCB level matches, the log and registers are another
            // TD's, and nothing of ours is bound. RTMR3 passes: that TD left it all zeros,
            // as an empty runtime event list does.
            "Intel production quote" => &[
                "tcb_status",
                "event_log",
                "mrtd",
                "rtmr0",
                "rtmr1",
                "rtmr2",
                "report_data",
            ],
            "Intel production quote, collateral expired" => &[
                "quote_signature",
                "tcb_status",
                "event_log",
                "mrtd",
                "rtmr0",
                "rtmr1",
                "rtmr2",
                "rtmr3",
                "report_data",
            ],
            "not a bundle" => &[
                "quote_signature",
                "tcb_status",
                "debug_off",
                "event_log",
                "mrtd",
                "rtmr0",
                "rtmr1",
                "rtmr2",
                "rtmr3",
                "report_data",
                "nonce",
            ],
            // Refused before any check.
            "not a request" | "nonce not hex" => &[],
            other => panic!("unnamed request {other}"),
        };
        assert_eq!(failed, want, "{name}");
        assert_eq!(
            result["ok"],
            want.is_empty() && name == "simulated, accepted",
            "{name}"
        );
        if name == "not a request" || name == "nonce not hex" {
            assert!(result["error"].is_string(), "{name}");
            assert_eq!(result["checks"], serde_json::json!([]));
        }
    }
}

#[test]
fn the_c_abi_round_trips_the_result() {
    for (name, request) in request_set() {
        let input = abi::alloc(request.len());
        assert!(!input.is_null());
        // SAFETY: `input` holds `request.len()` bytes from `alloc`.
        unsafe { std::ptr::copy_nonoverlapping(request.as_ptr(), input, request.len()) };
        // SAFETY: `input` holds `request.len()` initialised bytes.
        let output = unsafe { abi::verify(input, request.len()) };
        assert!(!output.is_null(), "{name}");
        // SAFETY: `verify` returns 4 bytes of length then that many bytes of JSON.
        let result = unsafe {
            let n = u32::from_le_bytes(std::slice::from_raw_parts(output, 4).try_into().unwrap());
            let text = std::slice::from_raw_parts(output.add(4), n as usize).to_vec();
            abi::dealloc(output, 4 + n as usize);
            text
        };
        // SAFETY: `input` came from `alloc(request.len())` and is not used again.
        unsafe { abi::dealloc(input, request.len()) };
        assert_eq!(
            String::from_utf8(result).unwrap(),
            verify_json(request.as_bytes()),
            "{name}"
        );
    }
    // An empty request is refused, and a zero-length buffer is never dereferenced.
    let empty = abi::alloc(0);
    // SAFETY: zero bytes are read; dealloc of a zero-length buffer does nothing.
    let output = unsafe { abi::verify(empty, 0) };
    // SAFETY: as above.
    let n =
        unsafe { u32::from_le_bytes(std::slice::from_raw_parts(output, 4).try_into().unwrap()) };
    // SAFETY: `output` is `4 + n` bytes from `verify`; `empty` is zero bytes from `alloc`.
    unsafe {
        abi::dealloc(output, 4 + n as usize);
        abi::dealloc(empty, 0);
    }
    assert!(n > 0);
}

#[test]
fn an_oversized_request_is_refused_before_parsing() {
    let big = vec![b' '; cloister_verifier_wasm::REQUEST_SIZE_MAX_BYTES + 1];
    let result: serde_json::Value = serde_json::from_str(&verify_json(&big)).unwrap();
    assert_eq!(result["ok"], false);
    assert!(result["error"].as_str().unwrap().contains("more than"));
}
