//! Inputs shared by the verifier-wasm tests: measurements.json files, and attestation
//! bundles made by the simulated TEE or from the real public Intel quote.

#![allow(dead_code)]

use cloister_measurements::{Collateral, CollateralFiles, Measurements};
use cloister_protocol::attestation::{Bundle, TeeName};
use cloister_tee::Tee;
use cloister_tee::simulated::{SimulatedTee, example_measurements};

/// 2026-01-01T00:00:00Z, inside the development chain's validity.
pub const NOW_2026: u64 = 1_767_225_600;
/// 2023-07-01T01:00:00Z, inside the validity of the real v4 quote's collateral.
pub const NOW_2023_07_01: u64 = 1_688_173_200;
pub const HPKE_KEY: [u8; 32] = [0x13; 32];
pub const SPKI: [u8; 32] = [0x24; 32];

/// A measurements.json as `cloister measure` writes it (cloister-tee's example, shared with
/// the measurements crate's tests); `release` changes the initrd event, as a new release of
/// the image would.
pub fn measurements(release: u32) -> Measurements {
    example_measurements(
        "firmware",
        [
            ("firmware configuration", 11),
            ("kernel", 3),
            (&format!("command line and initrd of release {release}"), 2),
            ("runtime", 0),
        ],
    )
}

pub fn simulated_tee(release: u32) -> SimulatedTee {
    SimulatedTee::new(measurements(release).to_json().as_bytes()).unwrap()
}

/// The body of `GET /attestation?nonce=` from a simulated box whose TLS key hashes to `spki`.
pub fn simulated_bundle(tee: &SimulatedTee, spki: &[u8; 32], nonce: &[u8]) -> Vec<u8> {
    let report_data = cloister_protocol::report_data(&HPKE_KEY, spki, nonce);
    let collateral = tee.collateral().unwrap().unwrap();
    serde_json::to_vec(&Bundle {
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
    })
    .unwrap()
}

/// A bundle around the real production v4 quote (Intel-signed, made for no Cloister box).
pub fn intel_bundle(nonce: &[u8]) -> Vec<u8> {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../measurements/tests/data/go-tdx-guest");
    let read = |name: &str| std::fs::read(data.join(name)).unwrap();
    let collateral = Collateral::from_files(CollateralFiles {
        tcb_info: &read("collateral-v4/tcb_info.json"),
        qe_identity: &read("collateral-v4/qe_identity.json"),
        pck_crl: &read("collateral-v4/pck_crl.der"),
        root_ca_crl: &read("collateral-v4/root_ca_crl.der"),
        pck_crl_issuer_chain: &read("collateral-v4/pck_crl_issuer_chain.pem"),
        tcb_info_issuer_chain: &read("collateral-v4/tcb_info_issuer_chain.pem"),
        qe_identity_issuer_chain: &read("collateral-v4/qe_identity_issuer_chain.pem"),
    })
    .unwrap();
    serde_json::to_vec(&Bundle {
        version: 1,
        tee: TeeName::Tdx,
        quote: read("tdx_prod_quote_SPR_E4.dat"),
        event_log: read("ccel/ccel_data.dat"),
        collateral: Some(serde_json::from_str(&collateral.to_json()).unwrap()),
        hpke_public_key: HPKE_KEY.to_vec(),
        hpke_key_id: 1,
        tls_spki_sha256: SPKI,
        nonce: nonce.to_vec(),
        model: "smollm2-135m-instruct".into(),
    })
    .unwrap()
}

/// The request JSON the wasm `verify` reads.
pub fn request(
    bundle: &[u8],
    expected: Option<&Measurements>,
    nonce: &[u8],
    now: u64,
    accept_simulated: bool,
) -> String {
    format!(
        r#"{{"bundle":{},"expected":{},"nonce":"{}","now":{now},"accept_simulated":{accept_simulated}}}"#,
        std::str::from_utf8(bundle).unwrap(),
        match expected {
            Some(m) => serde_json::to_string(m).unwrap(),
            None => "null".into(),
        },
        hex::encode(nonce),
    )
}

/// A set of requests covering passes and each kind of failure, for comparing two runs of
/// the verifier (native and in the browser).
pub fn request_set() -> Vec<(&'static str, String)> {
    let nonce = [0x42u8; 32];
    let tee = simulated_tee(1);
    let good = simulated_bundle(&tee, &SPKI, &nonce);
    let expected = measurements(1);
    let debug = simulated_bundle(&simulated_tee(1).with_debug(true), &SPKI, &nonce);
    let intel = intel_bundle(&nonce);
    let mut wrong = measurements(1);
    wrong.rtmr1.as_mut().unwrap()[0] ^= 1;
    vec![
        (
            "simulated, accepted",
            request(&good, Some(&expected), &nonce, NOW_2026, true),
        ),
        (
            "simulated, not accepted",
            request(&good, Some(&expected), &nonce, NOW_2026, false),
        ),
        (
            "simulated, another nonce sent",
            request(&good, Some(&expected), &[0x43; 32], NOW_2026, true),
        ),
        (
            "simulated, wrong rtmr1",
            request(&good, Some(&wrong), &nonce, NOW_2026, true),
        ),
        (
            "simulated, no expected measurements",
            request(&good, None, &nonce, NOW_2026, true),
        ),
        (
            "simulated debug TD",
            request(&debug, Some(&expected), &nonce, NOW_2026, true),
        ),
        (
            "Intel production quote",
            request(&intel, Some(&expected), &nonce, NOW_2023_07_01, false),
        ),
        (
            "Intel production quote, collateral expired",
            request(&intel, None, &nonce, 2_635_000_000, false),
        ),
        (
            "not a bundle",
            request(b"{\"version\":1}", None, &nonce, NOW_2026, false),
        ),
        ("not a request", "{\"bundle\":".to_owned()),
        (
            "nonce not hex",
            r#"{"bundle":{},"expected":null,"nonce":"zz","now":1,"accept_simulated":false}"#
                .to_owned(),
        ),
    ]
}
