//! `attestation::verify` on bundles made by the simulated TEE (cloister-tee, feature
//! `simulated`): real v4 quotes signed by the development chain, with event logs that replay
//! to the registers of a measurements.json. Everything passes only with `accept_simulated`,
//! and each kind of tampering fails exactly the check meant to catch it.

use cloister_measurements::attestation::{self, CHECK_NAMES, Inputs, Report};
use cloister_measurements::measurements::{Event, replay};
use cloister_measurements::{Measurements, sha384};
use cloister_protocol::attestation::{Bundle, TeeName};
use cloister_tee::Tee;
use cloister_tee::simulated::{SimulatedTee, example_measurements};

/// 2026-01-01T00:00:00Z, inside the development chain's validity.
const NOW_2026: u64 = 1_767_225_600;
const NONCE: [u8; 32] = [0x42; 32];
const HPKE_KEY: [u8; 32] = [0x13; 32];
const SPKI: [u8; 32] = [0x24; 32];

/// The example measurements.json the simulated TD claims (cloister-tee's helper, shared
/// with the verifier-wasm tests); RTMR3 holds one runtime event, which the event-log test
/// tampers with.
fn measurements() -> Measurements {
    example_measurements(
        "firmware",
        [
            ("firmware configuration", 11),
            ("kernel", 3),
            ("command line and initrd", 2),
            ("runtime", 1),
        ],
    )
}

/// What web-ui serves at /attestation?nonce=N, bound to `spki`.
fn bundle_from(tee: &SimulatedTee, spki: &[u8; 32], nonce: &[u8]) -> Bundle {
    let report_data = cloister_protocol::report_data(&HPKE_KEY, spki, nonce);
    let collateral = tee.collateral().unwrap().unwrap();
    Bundle {
        version: 1,
        tee: TeeName::Simulated,
        quote: tee.quote(&report_data).unwrap(),
        event_log: tee.event_log().unwrap(),
        collateral: Some(serde_json::from_slice(&collateral).unwrap()),
        hpke_public_key: HPKE_KEY.to_vec(),
        hpke_key_id: 7,
        tls_spki_sha256: *spki,
        nonce: nonce.to_vec(),
        model: "smollm2-135m-instruct".into(),
    }
}

fn tee() -> SimulatedTee {
    SimulatedTee::new(measurements().to_json().as_bytes()).unwrap()
}

fn run(
    bundle: &Bundle,
    expected: &Measurements,
    observed: Option<&[u8; 32]>,
    accept: bool,
) -> Report {
    let json = serde_json::to_vec(bundle).unwrap();
    attestation::verify(&Inputs {
        bundle_json: &json,
        expected: Some(expected),
        nonce_sent: &NONCE,
        observed_tls_spki_sha256: observed,
        now_unix_s: NOW_2026,
        accept_simulated: accept,
    })
}

fn failed_only(report: &Report, names: &[&str]) {
    let failed = report.failed();
    assert_eq!(failed, names, "{:#?}", report.checks);
    assert_eq!(report.checks.len(), CHECK_NAMES.len());
}

#[test]
fn a_simulated_box_passes_every_check_when_simulation_is_accepted() {
    let tee = tee();
    let report = run(
        &bundle_from(&tee, &SPKI, &NONCE),
        &measurements(),
        Some(&SPKI),
        true,
    );
    failed_only(&report, &[]);
    assert!(report.ok);
    assert!(report.simulated);
    assert!(report.trust_root.contains("SIMULATION"));
    let sig = report.check("quote_signature").unwrap();
    assert!(sig.detail.contains("SIMULATED"), "{}", sig.detail);
    assert_eq!(report.check("tcb_status").unwrap().actual, "UpToDate");
    assert_eq!(report.tee, "simulated");
    assert_eq!(report.hpke_public_key, hex::encode(HPKE_KEY));
    assert_eq!(report.hpke_key_id, 7);
    // Without an observed TLS key (the browser), the claimed one is used and said so.
    let report = run(
        &bundle_from(&tee, &SPKI, &NONCE),
        &measurements(),
        None,
        true,
    );
    assert!(report.ok);
    assert!(
        report
            .check("report_data")
            .unwrap()
            .detail
            .contains("TLS was not observed")
    );
}

#[test]
fn the_simulation_root_is_refused_unless_accepted() {
    let report = run(
        &bundle_from(&tee(), &SPKI, &NONCE),
        &measurements(),
        Some(&SPKI),
        false,
    );
    // The TCB is rated only under an accepted root; the rest reads from an unproven quote.
    failed_only(&report, &["quote_signature", "tcb_status"]);
    assert!(!report.simulated);
    let sig = report.check("quote_signature").unwrap();
    assert!(sig.actual.contains("SIMULATION"), "{}", sig.actual);
    assert!(sig.detail.contains("NOT Intel"), "{}", sig.detail);
    assert!(report.check("mrtd").unwrap().detail.contains("unproven"));
}

#[test]
fn a_swapped_tls_key_fails_the_binding_only() {
    // A relay with its own TLS key serves the box's bundle unchanged.
    let relay = [0x99u8; 32];
    let report = run(
        &bundle_from(&tee(), &SPKI, &NONCE),
        &measurements(),
        Some(&relay),
        true,
    );
    failed_only(&report, &["report_data"]);
    assert!(
        report
            .check("report_data")
            .unwrap()
            .detail
            .contains("another TLS key")
    );
}

#[test]
fn a_bundle_that_claims_another_tls_key_than_it_quoted_fails_the_binding() {
    let mut bundle = bundle_from(&tee(), &SPKI, &NONCE);
    bundle.tls_spki_sha256 = [0x98; 32];
    failed_only(&run(&bundle, &measurements(), None, true), &["report_data"]);
}

#[test]
fn another_hpke_key_fails_the_binding() {
    let mut bundle = bundle_from(&tee(), &SPKI, &NONCE);
    bundle.hpke_public_key = vec![0x77; 32];
    failed_only(
        &run(&bundle, &measurements(), Some(&SPKI), true),
        &["report_data"],
    );
}

#[test]
fn a_stale_attestation_fails_the_nonce_and_the_binding() {
    let old = [0x01u8; 32];
    let report = run(
        &bundle_from(&tee(), &SPKI, &old),
        &measurements(),
        Some(&SPKI),
        true,
    );
    failed_only(&report, &["report_data", "nonce"]);
    // A box that echoes the fresh nonce but quotes an old one is caught by the binding.
    let mut replayed = bundle_from(&tee(), &SPKI, &old);
    replayed.nonce = NONCE.to_vec();
    failed_only(
        &run(&replayed, &measurements(), Some(&SPKI), true),
        &["report_data"],
    );
}

#[test]
fn a_wrong_expected_measurement_fails_that_register_and_names_the_event() {
    let mut expected = measurements();
    expected.events.rtmr1[2] = Event::new("a kernel we did not build", &sha384(b"other kernel"));
    expected.rtmr1 = replay(&expected.events.rtmr1);
    let report = run(
        &bundle_from(&tee(), &SPKI, &NONCE),
        &expected,
        Some(&SPKI),
        true,
    );
    failed_only(&report, &["rtmr1"]);
    let c = report.check("rtmr1").unwrap();
    assert!(
        c.detail.contains("event 3 of this register differs"),
        "{}",
        c.detail
    );
    assert!(
        c.detail.contains("a kernel we did not build"),
        "{}",
        c.detail
    );
}

#[test]
fn a_debug_td_fails_the_debug_check() {
    let tee = tee().with_debug(true);
    let report = run(
        &bundle_from(&tee, &SPKI, &NONCE),
        &measurements(),
        Some(&SPKI),
        true,
    );
    failed_only(&report, &["debug_off"]);
    assert_eq!(report.check("debug_off").unwrap().actual, "on");
}

#[test]
fn a_tampered_event_log_fails_the_replay() {
    let mut bundle = bundle_from(&tee(), &SPKI, &NONCE);
    let digest = sha384(b"runtime/0");
    let at = bundle
        .event_log
        .windows(48)
        .position(|w| w == digest)
        .expect("the runtime event's digest is in the log");
    bundle.event_log[at] ^= 1;
    let report = run(&bundle, &measurements(), Some(&SPKI), true);
    failed_only(&report, &["event_log"]);
    assert!(report.check("event_log").unwrap().detail.contains("RTMR3"));
}

#[test]
fn a_flipped_quote_byte_fails_the_signature() {
    let mut bundle = bundle_from(&tee(), &SPKI, &NONCE);
    bundle.quote[100] ^= 1;
    let report = run(&bundle, &measurements(), Some(&SPKI), true);
    assert!(!report.check("quote_signature").unwrap().ok);
    assert!(!report.ok);
}
