//! `attestation::verify` on real, public TDX quotes (google/go-tdx-guest test data, see
//! tests/data/go-tdx-guest/SOURCE.md). None of them was made for a Cloister box, so the
//! binding checks must fail; these tests pin exactly which checks pass and which fail, and why.

use cloister_measurements::attestation::{self, CHECK_NAMES, Inputs, Report};
use cloister_measurements::{Collateral, CollateralFiles, Measurements, Quote};
use cloister_protocol::attestation::{Bundle, TeeName};

const V4: &[u8] = include_bytes!("data/go-tdx-guest/tdx_prod_quote_SPR_E4.dat");
const COS_QUOTE: &[u8] = include_bytes!("data/go-tdx-guest/ccel/cos-113-tdx-quote.dat");
const CCEL_LOG: &[u8] = include_bytes!("data/go-tdx-guest/ccel/ccel_data.dat");
/// 2023-07-01T01:00:00Z: inside the validity of the v4 quote's collateral.
const NOW_2023_07_01: u64 = 1_688_173_200;
const NONCE: [u8; 32] = [0x5a; 32];
const HPKE_KEY: [u8; 32] = [0x11; 32];
const SPKI: [u8; 32] = [0x22; 32];

fn collateral_v4_json() -> String {
    macro_rules! file {
        ($name:literal) => {
            include_bytes!(concat!("data/go-tdx-guest/collateral-v4/", $name))
        };
    }
    Collateral::from_files(CollateralFiles {
        tcb_info: file!("tcb_info.json"),
        qe_identity: file!("qe_identity.json"),
        pck_crl: file!("pck_crl.der"),
        root_ca_crl: file!("root_ca_crl.der"),
        pck_crl_issuer_chain: file!("pck_crl_issuer_chain.pem"),
        tcb_info_issuer_chain: file!("tcb_info_issuer_chain.pem"),
        qe_identity_issuer_chain: file!("qe_identity_issuer_chain.pem"),
    })
    .unwrap()
    .to_json()
}

fn bundle(quote: &[u8], log: &[u8], collateral: Option<&str>, nonce: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&Bundle {
        version: 1,
        tee: TeeName::Tdx,
        quote: quote.to_vec(),
        event_log: log.to_vec(),
        collateral: collateral.map(|text| serde_json::from_str(text).unwrap()),
        hpke_public_key: HPKE_KEY.to_vec(),
        hpke_key_id: 1,
        tls_spki_sha256: SPKI,
        nonce: nonce.to_vec(),
        model: "smollm2-135m-instruct".into(),
    })
    .unwrap()
}

/// measurements.json with the registers of `quote`, parsed by hand from the TD report body
/// offsets (TDX module ABI: MRTD at 136, RTMR0..3 from 328, 48 bytes each, after the 48-byte
/// header), independent of the crate's parser.
fn registers_of(quote: &[u8]) -> Measurements {
    let at =
        |offset: usize| -> [u8; 48] { quote[48 + offset..48 + offset + 48].try_into().unwrap() };
    Measurements {
        mrtd: Some(at(136)),
        rtmr0: Some(at(328)),
        rtmr1: Some(at(376)),
        rtmr2: Some(at(424)),
        rtmr3: Some(at(472)),
        ..Default::default()
    }
}

fn outcome(report: &Report) -> Vec<(&'static str, bool)> {
    report.checks.iter().map(|c| (c.name, c.ok)).collect()
}

fn expect(passing: &[&str]) -> Vec<(&'static str, bool)> {
    CHECK_NAMES
        .iter()
        .map(|&n| (n, passing.contains(&n)))
        .collect()
}

#[test]
fn hand_parsed_registers_match_the_parser() {
    // Guards the offsets `registers_of` uses, so the tests below compare real values.
    let q = Quote::parse(V4).unwrap();
    let m = registers_of(V4);
    assert_eq!(m.mrtd, Some(q.report.mrtd));
    assert_eq!(m.rtmr3, Some(q.report.rtmrs[3]));
}

#[test]
fn production_quote_is_signed_by_intel_but_binds_nothing_of_ours() {
    let expected = registers_of(V4);
    let collateral = collateral_v4_json();
    let json = bundle(V4, CCEL_LOG, Some(&collateral), &NONCE);
    let report = attestation::verify(&Inputs {
        bundle_json: &json,
        expected: Some(&expected),
        nonce_sent: &NONCE,
        observed_tls_spki_sha256: None,
        now_unix_s: NOW_2023_07_01,
        accept_simulated: false,
    });
    assert_eq!(
        outcome(&report),
        expect(&[
            "quote_signature",
            "debug_off",
            "mrtd",
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3",
            "nonce"
        ])
    );
    assert!(!report.ok);
    assert!(!report.simulated);
    assert_eq!(report.trust_root, "Intel SGX Root CA");
    let tcb = report.check("tcb_status").unwrap();
    assert_eq!(tcb.actual, "NoMatchingTcbLevel");
    assert!(tcb.expected.contains("UpToDate"));
    // The COS event log belongs to another TD: it cannot replay to this quote's RTMRs.
    let log = report.check("event_log").unwrap();
    assert!(
        log.detail.contains("not the one behind this quote"),
        "{}",
        log.detail
    );
    assert_ne!(log.expected, log.actual);
    // The report data check recomputes the binding with the values the box claims.
    let rd = report.check("report_data").unwrap();
    assert_eq!(
        rd.expected,
        hex::encode(cloister_protocol::report_data(&HPKE_KEY, &SPKI, &NONCE))
    );
    assert_eq!(
        rd.actual,
        hex::encode(Quote::parse(V4).unwrap().report.report_data)
    );
    assert!(rd.detail.contains("TLS was not observed"), "{}", rd.detail);
    // What the box serves is carried to the caller.
    assert_eq!(report.hpke_public_key, hex::encode(HPKE_KEY));
    assert_eq!(report.model, "smollm2-135m-instruct");
}

#[test]
fn one_wrong_expected_register_fails_that_register_only() {
    let mut expected = registers_of(V4);
    expected.rtmr2.as_mut().unwrap()[47] ^= 1;
    let collateral = collateral_v4_json();
    let json = bundle(V4, CCEL_LOG, Some(&collateral), &NONCE);
    let report = attestation::verify(&Inputs {
        bundle_json: &json,
        expected: Some(&expected),
        nonce_sent: &NONCE,
        observed_tls_spki_sha256: Some(&SPKI),
        now_unix_s: NOW_2023_07_01,
        accept_simulated: true,
    });
    assert_eq!(
        outcome(&report),
        expect(&[
            "quote_signature",
            "debug_off",
            "mrtd",
            "rtmr0",
            "rtmr1",
            "rtmr3",
            "nonce"
        ])
    );
    // accept_simulated allows the simulation root; it does not make Intel's quote simulated.
    assert!(!report.simulated);
    let rtmr2 = report.check("rtmr2").unwrap();
    assert_eq!(rtmr2.expected, hex::encode(expected.rtmr2.unwrap()));
    assert!(rtmr2.detail.contains("does not run the expected image"));
    assert!(
        report
            .check("report_data")
            .unwrap()
            .detail
            .contains("observed on this connection")
    );
}

#[test]
fn the_observed_tls_key_is_used_and_a_different_claim_is_named() {
    let collateral = collateral_v4_json();
    let json = bundle(V4, CCEL_LOG, Some(&collateral), &NONCE);
    let observed = [0x33u8; 32];
    let report = attestation::verify(&Inputs {
        bundle_json: &json,
        expected: None,
        nonce_sent: &NONCE,
        observed_tls_spki_sha256: Some(&observed),
        now_unix_s: NOW_2023_07_01,
        accept_simulated: false,
    });
    let rd = report.check("report_data").unwrap();
    assert!(!rd.ok);
    assert_eq!(
        rd.expected,
        hex::encode(cloister_protocol::report_data(&HPKE_KEY, &observed, &NONCE))
    );
    assert!(rd.detail.contains("another TLS key"), "{}", rd.detail);
    // Without expected measurements, every register check fails and says why.
    for name in ["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"] {
        let c = report.check(name).unwrap();
        assert!(
            !c.ok && c.detail.contains("no expected measurements"),
            "{c:?}"
        );
    }
}

#[test]
fn a_register_missing_from_measurements_json_fails() {
    let mut expected = registers_of(V4);
    expected.rtmr0 = None;
    let collateral = collateral_v4_json();
    let json = bundle(V4, CCEL_LOG, Some(&collateral), &NONCE);
    let report = attestation::verify(&Inputs {
        bundle_json: &json,
        expected: Some(&expected),
        nonce_sent: &NONCE,
        observed_tls_spki_sha256: None,
        now_unix_s: NOW_2023_07_01,
        accept_simulated: false,
    });
    let c = report.check("rtmr0").unwrap();
    assert!(!c.ok);
    assert!(c.detail.contains("gives no value for rtmr0"));
    assert!(report.check("rtmr1").unwrap().ok);
}

#[test]
fn cos_quote_replays_its_log_but_has_no_collateral_and_another_nonce() {
    let theirs = [0x77u8; 32];
    let json = bundle(COS_QUOTE, CCEL_LOG, None, &theirs);
    let expected = registers_of(COS_QUOTE);
    let report = attestation::verify(&Inputs {
        bundle_json: &json,
        expected: Some(&expected),
        nonce_sent: &NONCE,
        observed_tls_spki_sha256: None,
        now_unix_s: NOW_2023_07_01,
        accept_simulated: false,
    });
    assert_eq!(
        outcome(&report),
        expect(&[
            "debug_off",
            "event_log",
            "mrtd",
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3"
        ])
    );
    let sig = report.check("quote_signature").unwrap();
    assert_eq!(sig.actual, "no collateral");
    assert!(sig.detail.contains("no collateral"));
    // Values from an unverified quote are shown, and marked as unproven.
    assert!(
        report
            .check("event_log")
            .unwrap()
            .detail
            .contains("unproven")
    );
    assert!(report.check("mrtd").unwrap().detail.contains("unproven"));
    assert_eq!(report.check("tcb_status").unwrap().actual, "unknown");
    let nonce = report.check("nonce").unwrap();
    assert_eq!(nonce.expected, hex::encode(NONCE));
    assert_eq!(nonce.actual, hex::encode(theirs));
    assert!(report.trust_root.is_empty());
}

#[test]
fn an_expected_event_list_names_the_first_differing_event() {
    // The COS log's own RTMR1 events, with one digest changed, as measurements.json lists them.
    let log = cloister_measurements::eventlog::EventLog::parse(CCEL_LOG).unwrap();
    let mut expected = registers_of(COS_QUOTE);
    expected.rtmr1.as_mut().unwrap()[0] ^= 1;
    expected.events.rtmr1 = log
        .events
        .iter()
        .filter(|e| e.rtmr() == Some(1))
        .map(|e| cloister_measurements::Event::new(e.description.clone(), &e.sha384.unwrap()))
        .collect();
    let count = expected.events.rtmr1.len();
    assert!(count >= 2);
    expected.events.rtmr1[1].digest = "ab".repeat(48);
    let json = bundle(COS_QUOTE, CCEL_LOG, None, &NONCE);
    let report = attestation::verify(&Inputs {
        bundle_json: &json,
        expected: Some(&expected),
        nonce_sent: &NONCE,
        observed_tls_spki_sha256: None,
        now_unix_s: NOW_2023_07_01,
        accept_simulated: false,
    });
    let c = report.check("rtmr1").unwrap();
    assert!(!c.ok);
    assert!(
        c.detail.contains("event 2 of this register differs"),
        "{}",
        c.detail
    );
    assert!(c.detail.contains(&"ab".repeat(48)));
}

#[test]
fn expired_collateral_fails_the_signature_check() {
    const NOW_2053: u64 = 2_635_000_000;
    let collateral = collateral_v4_json();
    let json = bundle(V4, CCEL_LOG, Some(&collateral), &NONCE);
    let report = attestation::verify(&Inputs {
        bundle_json: &json,
        expected: None,
        nonce_sent: &NONCE,
        observed_tls_spki_sha256: None,
        now_unix_s: NOW_2053,
        accept_simulated: true,
    });
    let sig = report.check("quote_signature").unwrap();
    assert!(!sig.ok);
    assert_eq!(sig.actual, "does not verify");
    assert!(!report.check("tcb_status").unwrap().ok);
}

#[test]
fn a_flipped_quote_byte_fails_the_signature_check() {
    let collateral = collateral_v4_json();
    let mut quote = V4.to_vec();
    quote[48 + 136] ^= 1; // first byte of MRTD
    let json = bundle(&quote, CCEL_LOG, Some(&collateral), &NONCE);
    let expected = registers_of(&quote);
    let report = attestation::verify(&Inputs {
        bundle_json: &json,
        expected: Some(&expected),
        nonce_sent: &NONCE,
        observed_tls_spki_sha256: None,
        now_unix_s: NOW_2023_07_01,
        accept_simulated: false,
    });
    assert!(!report.check("quote_signature").unwrap().ok);
    // The forged MRTD "matches" what the attacker chose, but is marked unproven and the whole
    // report fails.
    assert!(report.check("mrtd").unwrap().detail.contains("unproven"));
    assert!(!report.ok);
}

#[test]
fn unreadable_bundles_fail_every_check_without_panicking() {
    let collateral = collateral_v4_json();
    let good = bundle(V4, CCEL_LOG, Some(&collateral), &NONCE);
    let mut cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"null".to_vec(),
        b"{}".to_vec(),
        good[..good.len() / 2].to_vec(),
        String::from_utf8(good.clone())
            .unwrap()
            .replace("\"version\":1", "\"version\":2")
            .into_bytes(),
        String::from_utf8(good.clone())
            .unwrap()
            .replace(&hex::encode(SPKI), "22")
            .into_bytes(),
        vec![b' '; attestation::BUNDLE_SIZE_MAX_BYTES + 1],
    ];
    // Every prefix of the start, to reach each field's error path.
    cases.extend((0..200).map(|n| good[..n].to_vec()));
    for json in &cases {
        let report = attestation::verify(&Inputs {
            bundle_json: json,
            expected: None,
            nonce_sent: &NONCE,
            observed_tls_spki_sha256: None,
            now_unix_s: NOW_2023_07_01,
            accept_simulated: false,
        });
        assert!(!report.ok);
        assert!(report.error.is_some());
        assert_eq!(outcome(&report), expect(&[]));
    }
}

#[test]
fn a_truncated_quote_or_log_in_a_readable_bundle_is_reported_not_panicked() {
    let collateral = collateral_v4_json();
    for cut in [0, 10, 48, 600, V4.len() - 100] {
        let json = bundle(
            &V4[..cut],
            &CCEL_LOG[..cut.min(CCEL_LOG.len())],
            Some(&collateral),
            &NONCE,
        );
        let report = attestation::verify(&Inputs {
            bundle_json: &json,
            expected: None,
            nonce_sent: &NONCE,
            observed_tls_spki_sha256: None,
            now_unix_s: NOW_2023_07_01,
            accept_simulated: false,
        });
        assert_eq!(
            report.check("quote_signature").unwrap().actual,
            "unreadable quote"
        );
        // Only the nonce, which does not depend on the quote, can pass.
        assert_eq!(outcome(&report), expect(&["nonce"]), "cut at {cut}");
    }
}

#[test]
fn shared_fixtures_are_the_ones_tested_here() {
    // The project's shared fixtures hold the same public quotes; the tests above use the
    // copies in tests/data, so a change to either is noticed.
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/tdx/go-tdx-guest");
    let Ok(v4) = std::fs::read(shared.join("tdx_prod_quote_SPR_E4.dat")) else {
        eprintln!("SKIPPED: {} is not there", shared.display());
        return;
    };
    assert_eq!(v4, V4);
    assert_eq!(
        std::fs::read(shared.join("ccel/ccel_data.dat")).unwrap(),
        CCEL_LOG
    );
}
