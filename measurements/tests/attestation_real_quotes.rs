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

/// What one check of a report must say.
enum Says {
    /// It passed (`true`) or failed.
    Ok(bool),
    /// Its expected value, exactly.
    Expected(String),
    /// Its expected value contains this text.
    ExpectedContains(String),
    /// Its found value, exactly.
    Actual(String),
    /// Its detail contains this text.
    Detail(String),
    /// Its expected and found values differ.
    ExpectedIsNotActual,
}

/// One bundle around a real quote, verified, and what the report must say.
struct Case {
    name: &'static str,
    quote: Vec<u8>,
    log: &'static [u8],
    /// Whether the bundle carries the v4 quote's collateral.
    collateral: bool,
    /// The nonce the bundle claims (the verifier is always sent [`NONCE`]).
    bundle_nonce: [u8; 32],
    expected: Option<Measurements>,
    observed: Option<[u8; 32]>,
    now: u64,
    accept_simulated: bool,
    /// Exactly the checks that fail, every other one passing; `None` where the case pins
    /// only the checks it names in `says`.
    failing: Option<&'static [&'static str]>,
    /// The root the chain ended at, where the case pins it.
    trust_root: Option<&'static str>,
    /// What named checks say.
    says: Vec<(&'static str, Says)>,
}

impl Case {
    /// A case with the v4 production quote, its collateral, the COS event log, the nonce
    /// sent, no expectations, no TLS key observed, at a time the collateral is valid.
    fn v4(name: &'static str) -> Self {
        Case {
            name,
            quote: V4.to_vec(),
            log: CCEL_LOG,
            collateral: true,
            bundle_nonce: NONCE,
            expected: None,
            observed: None,
            now: NOW_2023_07_01,
            accept_simulated: false,
            failing: None,
            trust_root: None,
            says: Vec::new(),
        }
    }

    fn verify(&self) -> Report {
        let collateral = self.collateral.then(collateral_v4_json);
        let json = bundle(
            &self.quote,
            self.log,
            collateral.as_deref(),
            &self.bundle_nonce,
        );
        attestation::verify(&Inputs {
            bundle_json: &json,
            expected: self.expected.as_ref(),
            nonce_sent: &NONCE,
            observed_tls_spki_sha256: self.observed.as_ref(),
            now_unix_s: self.now,
            accept_simulated: self.accept_simulated,
        })
    }
}

fn detail(text: &str) -> Says {
    Says::Detail(text.to_owned())
}

/// The real quotes against each kind of expectation: none of them was made for a Cloister
/// box, so no report passes, and each case pins which checks pass and what they say.
fn cases() -> Vec<Case> {
    let v4_report_data = hex::encode(Quote::parse(V4).unwrap().report.report_data);
    let wrong_rtmr2 = {
        let mut m = registers_of(V4);
        m.rtmr2.as_mut().unwrap()[47] ^= 1;
        m
    };
    let observed = [0x33u8; 32];
    let theirs = [0x77u8; 32];
    // The COS log's own RTMR1 events, with one digest changed, as measurements.json lists
    // them.
    let cos_events_one_changed = {
        let log = cloister_measurements::eventlog::EventLog::parse(CCEL_LOG).unwrap();
        let mut m = registers_of(COS_QUOTE);
        m.rtmr1.as_mut().unwrap()[0] ^= 1;
        m.events.rtmr1 = log
            .events
            .iter()
            .filter(|e| e.rtmr() == Some(1))
            .map(|e| cloister_measurements::Event::new(e.description.clone(), &e.sha384.unwrap()))
            .collect();
        assert!(m.events.rtmr1.len() >= 2);
        m.events.rtmr1[1].digest = "ab".repeat(48);
        m
    };
    let flipped = {
        let mut quote = V4.to_vec();
        quote[48 + 136] ^= 1; // first byte of MRTD
        quote
    };
    vec![
        Case {
            expected: Some(registers_of(V4)),
            failing: Some(&["tcb_status", "event_log", "report_data"]),
            trust_root: Some("Intel SGX Root CA"),
            says: vec![
                ("tcb_status", Says::Actual("NoMatchingTcbLevel".into())),
                ("tcb_status", Says::ExpectedContains("UpToDate".into())),
                // The COS event log belongs to another TD: it cannot replay to this quote's
                // RTMRs.
                ("event_log", detail("not the one behind this quote")),
                ("event_log", Says::ExpectedIsNotActual),
                // The report data check recomputes the binding with the values the box
                // claims.
                (
                    "report_data",
                    Says::Expected(hex::encode(cloister_protocol::report_data(
                        &HPKE_KEY, &SPKI, &NONCE,
                    ))),
                ),
                ("report_data", Says::Actual(v4_report_data)),
                ("report_data", detail("TLS was not observed")),
            ],
            ..Case::v4("the production quote is signed by Intel but binds nothing of ours")
        },
        Case {
            expected: Some(wrong_rtmr2.clone()),
            observed: Some(SPKI),
            // accept_simulated allows the simulation root; it does not make Intel's quote
            // simulated.
            accept_simulated: true,
            failing: Some(&["tcb_status", "event_log", "rtmr2", "report_data"]),
            says: vec![
                (
                    "rtmr2",
                    Says::Expected(hex::encode(wrong_rtmr2.rtmr2.unwrap())),
                ),
                ("rtmr2", detail("does not run the expected image")),
                ("report_data", detail("observed on this connection")),
            ],
            ..Case::v4("one wrong expected register fails that register only")
        },
        Case {
            observed: Some(observed),
            says: vec![
                ("report_data", Says::Ok(false)),
                (
                    "report_data",
                    Says::Expected(hex::encode(cloister_protocol::report_data(
                        &HPKE_KEY, &observed, &NONCE,
                    ))),
                ),
                ("report_data", detail("another TLS key")),
                // Without expected measurements, every register check fails and says why.
                ("mrtd", Says::Ok(false)),
                ("mrtd", detail("no expected measurements")),
                ("rtmr0", Says::Ok(false)),
                ("rtmr0", detail("no expected measurements")),
                ("rtmr1", Says::Ok(false)),
                ("rtmr1", detail("no expected measurements")),
                ("rtmr2", Says::Ok(false)),
                ("rtmr2", detail("no expected measurements")),
                ("rtmr3", Says::Ok(false)),
                ("rtmr3", detail("no expected measurements")),
            ],
            ..Case::v4("the observed TLS key is used and a different claim is named")
        },
        Case {
            expected: Some(Measurements {
                rtmr0: None,
                ..registers_of(V4)
            }),
            says: vec![
                ("rtmr0", Says::Ok(false)),
                ("rtmr0", detail("gives no value for rtmr0")),
                ("rtmr1", Says::Ok(true)),
            ],
            ..Case::v4("a register missing from measurements.json fails")
        },
        Case {
            quote: COS_QUOTE.to_vec(),
            collateral: false,
            bundle_nonce: theirs,
            expected: Some(registers_of(COS_QUOTE)),
            failing: Some(&["quote_signature", "tcb_status", "report_data", "nonce"]),
            trust_root: Some(""),
            says: vec![
                ("quote_signature", Says::Actual("no collateral".into())),
                ("quote_signature", detail("no collateral")),
                // Values from an unverified quote are shown, and marked as unproven.
                ("event_log", detail("unproven")),
                ("mrtd", detail("unproven")),
                ("tcb_status", Says::Actual("unknown".into())),
                ("nonce", Says::Expected(hex::encode(NONCE))),
                ("nonce", Says::Actual(hex::encode(theirs))),
            ],
            ..Case::v4("the COS quote replays its log but has no collateral and another nonce")
        },
        Case {
            quote: COS_QUOTE.to_vec(),
            collateral: false,
            expected: Some(cos_events_one_changed),
            says: vec![
                ("rtmr1", Says::Ok(false)),
                ("rtmr1", detail("event 2 of this register differs")),
                ("rtmr1", detail(&"ab".repeat(48))),
            ],
            ..Case::v4("an expected event list names the first differing event")
        },
        Case {
            now: 2_635_000_000, // 2053
            accept_simulated: true,
            says: vec![
                ("quote_signature", Says::Ok(false)),
                ("quote_signature", Says::Actual("does not verify".into())),
                ("tcb_status", Says::Ok(false)),
            ],
            ..Case::v4("expired collateral fails the signature check")
        },
        Case {
            expected: Some(registers_of(&flipped)),
            quote: flipped,
            says: vec![
                ("quote_signature", Says::Ok(false)),
                // The forged MRTD "matches" what the attacker chose, but is marked unproven
                // (and the whole report fails, as every case's does).
                ("mrtd", detail("unproven")),
            ],
            ..Case::v4("a flipped quote byte fails the signature check")
        },
    ]
}

#[test]
fn each_real_quote_case_passes_and_fails_exactly_the_pinned_checks() {
    for case in cases() {
        let name = case.name;
        let report = case.verify();
        // No real quote was made for a Cloister box: nothing passes as a whole, nothing is
        // simulated, and what the box serves is carried to the caller.
        assert!(!report.ok, "{name}");
        assert!(!report.simulated, "{name}");
        assert_eq!(report.hpke_public_key, hex::encode(HPKE_KEY), "{name}");
        assert_eq!(report.model, "smollm2-135m-instruct", "{name}");
        if let Some(failing) = case.failing {
            let passing: Vec<&str> = CHECK_NAMES
                .into_iter()
                .filter(|n| !failing.contains(n))
                .collect();
            assert_eq!(outcome(&report), expect(&passing), "{name}");
        }
        if let Some(root) = case.trust_root {
            assert_eq!(report.trust_root, root, "{name}");
        }
        for (check, says) in &case.says {
            let c = report
                .check(check)
                .unwrap_or_else(|| panic!("{name}: no check {check}"));
            match says {
                Says::Ok(ok) => assert_eq!(c.ok, *ok, "{name}: {c:?}"),
                Says::Expected(text) => assert_eq!(&c.expected, text, "{name}: {c:?}"),
                Says::ExpectedContains(text) => {
                    assert!(c.expected.contains(text), "{name}: {c:?}")
                }
                Says::Actual(text) => assert_eq!(&c.actual, text, "{name}: {c:?}"),
                Says::Detail(text) => assert!(c.detail.contains(text), "{name}: {c:?}"),
                Says::ExpectedIsNotActual => assert_ne!(c.expected, c.actual, "{name}: {c:?}"),
            }
        }
    }
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
