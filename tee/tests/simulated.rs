//! The simulated TEE end to end: its quotes verify with measurements' verifier only when
//! simulation is explicitly accepted, show the given registers and report data, and come
//! with an event log that replays to them.

#![cfg(feature = "simulated")]

use cloister_measurements::eventlog::EventLog;
use cloister_measurements::measurements::{Event, replay};
use cloister_measurements::quote::{
    Collateral, Expectations, Quote, QuoteError, SIMULATION_ROOT_CA_DER, TcbStatus, TrustRoot,
    VerifyOptions, verify, verify_with_options,
};
use cloister_measurements::{Measurements, sha384};
use cloister_tee::simulated::{self, SimulatedTee};
use cloister_tee::{Tee, TeeError, TeeKind};

/// 2026-01-01T00:00:00Z, inside the development chain's validity (2025 to the end of 2099).
const NOW_2026: u64 = 1_767_225_600;
const ACCEPT: VerifyOptions = VerifyOptions {
    accept_simulated: true,
};

fn events(label: &str, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new(
                format!("{label} event {i}"),
                &sha384(format!("{label}{i}").as_bytes()),
            )
        })
        .collect()
}

/// A measurements.json as `cloister measure` writes it: registers and their events.
fn measurements() -> Measurements {
    let mut m = Measurements {
        mrtd: Some(sha384(b"a firmware")),
        ..Default::default()
    };
    m.events.rtmr0 = events("firmware", 13);
    m.events.rtmr1 = events("kernel", 3);
    m.events.rtmr2 = events("command line", 2);
    m.events.rtmr3 = Vec::new();
    m.rtmr0 = replay(&m.events.rtmr0);
    m.rtmr1 = replay(&m.events.rtmr1);
    m.rtmr2 = replay(&m.events.rtmr2);
    m.rtmr3 = replay(&m.events.rtmr3);
    m
}

fn tee() -> SimulatedTee {
    SimulatedTee::new(measurements().to_json().as_bytes()).unwrap()
}

fn collateral(t: &SimulatedTee) -> Collateral {
    Collateral::from_json(&t.collateral().unwrap().unwrap()).unwrap()
}

fn report_data(seed: u8) -> [u8; 64] {
    std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
}

#[test]
fn a_simulated_quote_verifies_when_simulation_is_accepted() {
    let t = tee();
    assert_eq!(t.kind(), TeeKind::Simulated);
    assert!(!t.kind().is_confidential());
    let rd = report_data(1);
    let quote = t.quote(&rd).unwrap();
    let v = verify_with_options(&quote, &collateral(&t), NOW_2026, &ACCEPT).unwrap();
    assert_eq!(v.trust_root, TrustRoot::Simulated);
    assert!(v.warning.unwrap().contains("SIMULATED"));
    assert_eq!(v.quote_version, 4);
    assert_eq!(v.tcb_status, TcbStatus::UpToDate);
    assert!(!v.debug);
    let m = measurements();
    assert_eq!(Some(v.td.mrtd), m.mrtd);
    assert_eq!(v.td.rtmrs.map(Some), [m.rtmr0, m.rtmr1, m.rtmr2, m.rtmr3]);
    // Everything matches what a verifier that opted into simulation expects.
    let expected = Expectations {
        measurements: Some(m),
        report_data: Some(rd),
        accept_simulated: true,
        ..Default::default()
    };
    assert_eq!(v.check(&expected), vec![]);
    // The JSON form of the verdict says it too.
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["trust_root"], "simulated");
}

#[test]
fn a_simulated_quote_is_rejected_by_default_saying_why() {
    let t = tee();
    let quote = t.quote(&report_data(2)).unwrap();
    let err = verify(&quote, &collateral(&t), NOW_2026).unwrap_err();
    assert_eq!(err, QuoteError::SimulatedRoot);
    assert!(err.to_string().contains("SIMULATION root"), "{err}");
    let err = verify_with_options(&quote, &collateral(&t), NOW_2026, &VerifyOptions::default())
        .unwrap_err();
    assert_eq!(err, QuoteError::SimulatedRoot);
    // A verdict obtained with the option still fails a check that did not opt in.
    let v = verify_with_options(&quote, &collateral(&t), NOW_2026, &ACCEPT).unwrap();
    let mismatches = v.check(&Expectations::default());
    assert!(
        mismatches.iter().any(|m| m.field == "trust_root"),
        "{mismatches:?}"
    );
}

#[test]
fn every_byte_flip_in_the_signed_region_or_qe_report_fails() {
    let t = tee();
    let c = collateral(&t);
    let mut quote = t.quote(&report_data(3)).unwrap();
    let parsed = Quote::parse(&quote).unwrap();
    // Header and TD report body, signed by the attestation key.
    let mut positions: Vec<usize> = (0..parsed.signed_len).collect();
    // The attestation key and the QE report, signed by the PCK key and binding the key.
    let sig_data = parsed.signed_len + 4;
    let qe_report_at = sig_data + 64 + 64 + 6;
    positions.extend(sig_data + 64..qe_report_at - 6);
    positions.extend(qe_report_at..qe_report_at + 384 + 64);
    assert_eq!(&quote[qe_report_at..qe_report_at + 384], &parsed.qe_report);
    for pos in positions {
        quote[pos] ^= 0x40;
        let r = verify_with_options(&quote, &c, NOW_2026, &ACCEPT);
        assert!(r.is_err(), "flipping byte {pos} still verifies");
        quote[pos] ^= 0x40;
    }
    assert!(verify_with_options(&quote, &c, NOW_2026, &ACCEPT).is_ok());
}

#[test]
fn the_qe_report_binds_the_attestation_key_as_intels_qe_does() {
    use sha2::Digest;
    let quote = tee().quote(&report_data(4)).unwrap();
    let q = Quote::parse(&quote).unwrap();
    let mut h = sha2::Sha256::new();
    h.update(q.attestation_key);
    h.update(&q.qe_auth_data);
    assert_eq!(&q.qe_report[320..352], h.finalize().as_slice());
    assert_eq!(&q.qe_report[352..384], &[0u8; 32]);
}

#[test]
fn the_debug_bit_is_off_by_default_and_detected_when_set() {
    let t = tee().with_debug(true);
    let rd = report_data(5);
    let quote = t.quote(&rd).unwrap();
    assert_eq!(Quote::parse(&quote).unwrap().report.td_attributes & 1, 1);
    let v = verify_with_options(&quote, &collateral(&t), NOW_2026, &ACCEPT).unwrap();
    assert!(v.debug);
    let expected = Expectations {
        accept_simulated: true,
        ..Default::default()
    };
    let mismatches = v.check(&expected);
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    assert_eq!(mismatches[0].field, "td_attributes.debug");
}

#[test]
fn report_data_round_trips_and_differs_per_request() {
    let t = tee();
    let c = collateral(&t);
    let mut quotes = Vec::new();
    for seed in [0u8, 7, 255] {
        let rd = report_data(seed);
        let quote = t.quote(&rd).unwrap();
        let v = verify_with_options(&quote, &c, NOW_2026, &ACCEPT).unwrap();
        assert_eq!(v.td.report_data, rd);
        // Another report data is a mismatch.
        let wrong = Expectations {
            report_data: Some(report_data(seed.wrapping_add(1))),
            accept_simulated: true,
            ..Default::default()
        };
        assert_eq!(v.check(&wrong)[0].field, "report_data");
        quotes.push(quote);
    }
    assert_ne!(quotes[0], quotes[1]);
}

#[test]
fn the_event_log_replays_to_the_quote_rtmrs() {
    let t = tee();
    let log = EventLog::parse(&t.event_log().unwrap()).unwrap();
    let quote = Quote::parse(&t.quote(&report_data(6)).unwrap()).unwrap();
    assert_eq!(log.replay(), quote.report.rtmrs);
    let m = measurements();
    assert_eq!(
        log.events.len(),
        m.events.rtmr0.len() + m.events.rtmr1.len() + m.events.rtmr2.len()
    );
    // Each event says it is simulated, and which measurements.json event it stands for.
    assert_eq!(log.events[0].description, "SIMULATED: firmware event 0");
    assert!(
        log.events
            .iter()
            .all(|e| e.description.starts_with("SIMULATED: "))
    );
}

#[test]
fn measurements_whose_events_do_not_replay_are_refused() {
    let mut m = measurements();
    m.rtmr1 = Some(sha384(b"something else"));
    let err = SimulatedTee::new(m.to_json().as_bytes()).unwrap_err();
    assert!(matches!(err, TeeError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("rtmr1"), "{err}");
    let mut m = measurements();
    m.mrtd = None;
    assert!(SimulatedTee::new(m.to_json().as_bytes()).is_err());
    assert!(SimulatedTee::new(b"not json").is_err());
}

#[test]
fn the_collateral_expires_and_is_not_valid_before_2025() {
    let t = tee();
    let quote = t.quote(&report_data(8)).unwrap();
    const NOW_2100_06: u64 = 4_115_750_400;
    const NOW_2024: u64 = 1_704_067_200;
    assert!(verify_with_options(&quote, &collateral(&t), NOW_2100_06, &ACCEPT).is_err());
    assert!(verify_with_options(&quote, &collateral(&t), NOW_2024, &ACCEPT).is_err());
}

#[test]
fn the_development_root_is_named_loudly_and_is_the_verifiers() {
    let name = simulated::ROOT_CA_NAME.as_bytes();
    assert!(
        SIMULATION_ROOT_CA_DER
            .windows(name.len())
            .any(|w| w == name)
    );
    assert!(simulated::ROOT_CA_NAME.contains("NOT INTEL"));
    // The chain in the quote ends in the same root as the one the verifier pins.
    let quote = tee().quote(&report_data(9)).unwrap();
    let chain = Quote::parse(&quote).unwrap().pck_chain_pem;
    assert!(chain.ends_with(simulated::dev_chain::ROOT_CA_PEM));
    assert_eq!(
        TrustRoot::Simulated.certificate_der(),
        SIMULATION_ROOT_CA_DER
    );
}

#[test]
fn quotes_are_deterministic_for_the_same_input() {
    // RFC 6979 signatures: the same measurements and report data give the same bytes.
    let rd = report_data(10);
    assert_eq!(tee().quote(&rd).unwrap(), tee().quote(&rd).unwrap());
}

#[test]
fn a_measurements_file_is_read_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("measurements.json");
    std::fs::write(&path, measurements().to_json()).unwrap();
    let t = SimulatedTee::from_file(&path).unwrap();
    assert_eq!(t.registers(), tee().registers());
    let err = SimulatedTee::from_file(&dir.path().join("missing.json")).unwrap_err();
    assert!(matches!(err, TeeError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing.json"), "{err}");
}
