//! GPU evidence verification against real NVIDIA evidence, chains and RIMs (tests/data/nvidia,
//! copied from NVIDIA/nvtrust and NVIDIA/attestation-sdk under Apache-2.0; see SOURCE.md
//! there). Every fixture is used here, positive or negative, and each negative case names the
//! check that must fail.

use cloister_measurements::gpu::{
    self, Evidence, Inputs, Outcome, Rim, SpdmReport, Status, cert, spdm,
};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/nvidia");

/// 2024-06-01T00:00:00Z: inside every fixture RIM signer's validity.
const JUNE_2024: u64 = 1_717_200_000;
/// 2026-01-01T00:00:00Z: after the VBIOS RIM signers expired.
const JAN_2026: u64 = 1_767_225_600;
/// 2025-06-01T00:00:00Z: inside the 550.144.03 driver RIM signer's validity.
const JUNE_2025: u64 = 1_748_736_000;

fn read(path: &str) -> Vec<u8> {
    std::fs::read(format!("{DATA}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hex_file(path: &str) -> Vec<u8> {
    let text = String::from_utf8(read(path)).unwrap();
    hex::decode(text.trim()).unwrap()
}

fn evidence(report: &str, chain: &str) -> Evidence {
    Evidence {
        arch: "HOPPER".to_owned(),
        report: hex_file(report),
        cert_chain: read(chain),
    }
}

fn verify(evidence: &[Evidence], nonce: Option<&[u8]>, rims: &[Vec<u8>], now: u64) -> Outcome {
    gpu::verify(&Inputs {
        evidence,
        nonce,
        rims,
        expected_driver: None,
        crls: &[],
        allow_stale_revocation: false,
        now_unix_s: now,
    })
}

fn status(o: &Outcome, gpu: usize, name: &str) -> Status {
    o.gpus[gpu].check(name).unwrap().status
}

fn detail(o: &Outcome, gpu: usize, name: &str) -> String {
    let c = o.gpus[gpu].check(name).unwrap();
    format!("{} | {} | {}", c.expected, c.actual, c.detail)
}

fn assert_checks(o: &Outcome, gpu: usize, expect: &[(&str, Status)]) {
    for (name, want) in expect {
        assert_eq!(
            status(o, gpu, name),
            *want,
            "{name}: {}",
            detail(o, gpu, name)
        );
    }
}

const NVTRUST_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

fn nvtrust_hopper() -> Evidence {
    evidence(
        "nvtrust/hopperAttestationReport.txt",
        "nvtrust/hopperCertChain.txt",
    )
}

#[test]
fn nvtrust_hopper_report_verifies_with_nonce_fwid_and_chain() {
    let nonce = hex::decode(NVTRUST_NONCE).unwrap();
    let o = verify(&[nvtrust_hopper()], Some(&nonce), &[], JUNE_2024);
    assert_checks(
        &o,
        0,
        &[
            ("gpu_report_signature", Status::Pass),
            ("gpu_cert_chain", Status::Pass),
            ("gpu_fwid", Status::Pass),
            ("gpu_nonce", Status::Pass),
            ("gpu_driver", Status::Unchecked),
            ("gpu_measurements", Status::Unchecked),
            ("gpu_revocation", Status::Unchecked),
        ],
    );
    assert_eq!(o.gpus[0].driver_version, "550.90.07");
    assert_eq!(o.gpus[0].vbios_version, "96.00.9F.00.01");
    assert_eq!(hex_file("nvtrust/hopperAttestationReport.txt").len(), 4117);
    // Unchecked is not a pass: the outcome is not ok, but nothing failed.
    assert!(!o.ok);
    assert!(!o.failed, "{:?}", o.failures());
}

#[test]
fn pinned_driver_version_is_compared() {
    let ev = [nvtrust_hopper()];
    let run = |want: &str| {
        gpu::verify(&Inputs {
            evidence: &ev,
            nonce: None,
            rims: &[],
            expected_driver: Some(want),
            crls: &[],
            allow_stale_revocation: false,
            now_unix_s: JUNE_2024,
        })
    };
    assert_eq!(status(&run("550.90.07"), 0, "gpu_driver"), Status::Pass);
    let o = run("550.144.03");
    assert_eq!(status(&o, 0, "gpu_driver"), Status::Fail);
    assert!(o.failed);
}

#[test]
fn wrong_nonce_fails_gpu_nonce_only() {
    let mut nonce = hex::decode(NVTRUST_NONCE).unwrap();
    nonce[0] ^= 1;
    let o = verify(&[nvtrust_hopper()], Some(&nonce), &[], JUNE_2024);
    assert_checks(
        &o,
        0,
        &[
            ("gpu_nonce", Status::Fail),
            ("gpu_report_signature", Status::Pass),
            ("gpu_cert_chain", Status::Pass),
        ],
    );
    assert_eq!(o.failures(), ["gpu0:gpu_nonce"]);
}

#[test]
fn flipped_signature_byte_fails_gpu_report_signature() {
    let mut ev = nvtrust_hopper();
    let n = ev.report.len();
    ev.report[n - 10] ^= 0x01;
    let o = verify(&[ev], None, &[], JUNE_2024);
    assert_eq!(o.failures(), ["gpu0:gpu_report_signature"]);
}

#[test]
fn flipped_measurement_byte_fails_signature_and_measurements() {
    // sample_hopper (535.86.09) matches the 1010_0200_882 VBIOS RIM on every active index.
    let rims = [read("nvtrust/1010_0200_882_96005E0001_PROD.swidtag")];
    let good = evidence(
        "attestation-sdk/sample_hopperAttestationReport.txt",
        "attestation-sdk/sample_hopperCertChain.txt",
    );
    let o = verify(std::slice::from_ref(&good), None, &rims, JUNE_2024);
    // Every VBIOS measurement matches; the driver's are not compared (no driver RIM for
    // 535.86.09 exists in the fixtures), which is said, not passed.
    assert_eq!(status(&o, 0, "gpu_measurements"), Status::Unchecked);
    let d = detail(&o, 0, "gpu_measurements");
    assert!(d.contains("no driver RIM"), "{d}");
    assert!(d.contains("VBIOS RIM signed by"), "{d}");
    assert_eq!(status(&o, 0, "gpu_report_signature"), Status::Pass);
    // This old report has no FWID field: required, so it fails.
    assert_eq!(status(&o, 0, "gpu_fwid"), Status::Fail);

    // Measurement block 2 (RIM index 1, an active VBIOS measurement): its value starts at
    // 37 + 8 (response header) + 55 (block 1) + 7 (block 2 header).
    let report = SpdmReport::parse(&good.report).unwrap();
    assert_eq!(report.blocks[&1].value.len(), 48);
    let mut bad = good.clone();
    let at = 37 + 8 + 55 + 7;
    assert_eq!(bad.report[at..at + 48], report.blocks[&2].value[..]);
    bad.report[at] ^= 0x80;
    let o = verify(&[bad], None, &rims, JUNE_2024);
    assert_eq!(status(&o, 0, "gpu_report_signature"), Status::Fail);
    assert_eq!(status(&o, 0, "gpu_measurements"), Status::Fail);
    let d = detail(&o, 0, "gpu_measurements");
    assert!(d.contains("1 (VBIOS"), "{d}");
}

/// Re-encodes a PEM chain after `edit` changed one certificate's DER.
fn edit_chain(pem: &[u8], which: usize, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let certs = cert::parse_pem_chain(pem).unwrap();
    let mut out = String::new();
    let mut edit = Some(edit);
    for (i, c) in certs.iter().enumerate() {
        let mut der = c.der.clone();
        if i == which {
            (edit.take().unwrap())(&mut der);
        }
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

#[test]
fn flipped_chain_byte_fails_gpu_cert_chain() {
    // The last byte of the Provisioner ICA's signature.
    let mut ev = nvtrust_hopper();
    ev.cert_chain = edit_chain(&ev.cert_chain, 2, |der| {
        let n = der.len();
        der[n - 1] ^= 0x01;
    });
    let o = verify(&[ev], None, &[], JUNE_2024);
    assert_eq!(o.failures(), ["gpu0:gpu_cert_chain"]);
    assert!(detail(&o, 0, "gpu_cert_chain").contains("Provisioner ICA"));
}

#[test]
fn expired_chain_fails_gpu_cert_chain() {
    // Device certificates run to 9999-12-31T23:59:59Z; one second later they have expired.
    let o = verify(&[nvtrust_hopper()], None, &[], 253_402_300_800);
    assert_eq!(status(&o, 0, "gpu_cert_chain"), Status::Fail);
    assert!(detail(&o, 0, "gpu_cert_chain").contains("expired"));
    // And before the device's certificates were issued, it is not valid yet.
    let o = verify(&[nvtrust_hopper()], None, &[], 1_600_000_000);
    assert_eq!(status(&o, 0, "gpu_cert_chain"), Status::Fail);
    assert!(detail(&o, 0, "gpu_cert_chain").contains("not valid yet"));
}

#[test]
fn chain_to_another_root_fails_gpu_cert_chain() {
    // Pin NVIDIA's RIM root in place of the device root: the chain must not verify.
    let o = gpu::verify_with_roots(
        &Inputs {
            evidence: &[nvtrust_hopper()],
            nonce: None,
            rims: &[],
            expected_driver: None,
            crls: &[],
            allow_stale_revocation: false,
            now_unix_s: JUNE_2024,
        },
        &gpu::rim_root(),
        &gpu::rim_root(),
    );
    assert_eq!(status(&o, 0, "gpu_cert_chain"), Status::Fail);
    assert!(detail(&o, 0, "gpu_cert_chain").contains("not the pinned root"));
    // A chain whose own top is replaced by a self-signed impostor fails the same way.
    let mut ev = nvtrust_hopper();
    let rim_root_pem = read("nvtrust/verifier_RIM_root.pem");
    let mut chain = cert::parse_pem_chain(&ev.cert_chain).unwrap();
    chain.pop();
    let mut pem = Vec::new();
    let text = String::from_utf8(ev.cert_chain.clone()).unwrap();
    let cut = text.rfind("-----BEGIN CERTIFICATE-----").unwrap();
    pem.extend_from_slice(&text.as_bytes()[..cut]);
    pem.extend_from_slice(&rim_root_pem);
    ev.cert_chain = pem;
    let o = verify(&[ev], None, &[], JUNE_2024);
    assert_eq!(status(&o, 0, "gpu_cert_chain"), Status::Fail);
}

#[test]
fn sample_hopper_invalid_signature_fixture_fails_gpu_report_signature() {
    let ev = evidence(
        "attestation-sdk/sample_hopperAttestationReportInvalidSignature.txt",
        "attestation-sdk/sample_hopperCertChain.txt",
    );
    let o = verify(&[ev], None, &[], JUNE_2024);
    assert_eq!(status(&o, 0, "gpu_report_signature"), Status::Fail);
    assert_eq!(status(&o, 0, "gpu_cert_chain"), Status::Pass);
}

#[test]
fn sample_hopper_expired_fixture_is_signed_and_chains() {
    // NVIDIA calls this pair "expired" for its OCSP test (the certificates themselves run
    // to 9999): offline it verifies, and revocation is left unchecked, not passed.
    let ev = evidence(
        "attestation-sdk/sample_hopperAttestationReportExpired.txt",
        "attestation-sdk/sample_hopperCertChainExpired.txt",
    );
    let o = verify(&[ev], None, &[], JUNE_2024);
    assert_checks(
        &o,
        0,
        &[
            ("gpu_report_signature", Status::Pass),
            ("gpu_cert_chain", Status::Pass),
            ("gpu_revocation", Status::Unchecked),
        ],
    );
}

#[test]
fn blackwell_fwid_comes_from_dice_tcb_info() {
    let ev = evidence(
        "attestation-sdk/sample_blackwellAttestationReport.txt",
        "attestation-sdk/sample_blackwellCertChain.txt",
    );
    let chain = cert::parse_pem_chain(&ev.cert_chain).unwrap();
    assert!(chain[0].extension(cert::OID_TCG_DICE_TCB_INFO).is_some());
    let o = verify(&[ev], None, &[], JUNE_2024);
    assert_checks(
        &o,
        0,
        &[
            ("gpu_report_signature", Status::Pass),
            ("gpu_cert_chain", Status::Pass),
            ("gpu_fwid", Status::Pass),
        ],
    );
    assert!(o.gpus[0].driver_version.starts_with("575."));
}

#[test]
fn serialized_evidence_lists_verify() {
    for (file, count, compute) in [
        ("attestation-sdk/hopper_evidence.json", 1, None),
        ("attestation-sdk/multi_gpu_hopper.json", 4, None),
        ("nvtrust/ppcie_gpu_evidence.json", 8, Some("gpu-ppcie")),
    ] {
        let (ev, nonce) = gpu::parse_evidence_json(&read(file)).unwrap();
        assert_eq!(ev.len(), count, "{file}");
        let nonce = hex::decode(nonce.unwrap()).unwrap();
        let o = verify(&ev, Some(&nonce), &[], JUNE_2024);
        for g in 0..count {
            assert_checks(
                &o,
                g,
                &[
                    ("gpu_report_signature", Status::Pass),
                    ("gpu_cert_chain", Status::Pass),
                    ("gpu_fwid", Status::Pass),
                    ("gpu_nonce", Status::Pass),
                ],
            );
            if let Some(c) = compute {
                assert_eq!(status(&o, g, "gpu_mode"), Status::Pass, "{file}");
                assert_eq!(o.gpus[g].compute, c);
            }
        }
        assert!(!o.failed, "{file}: {:?}", o.failures());
    }
}

#[test]
fn evidence_json_limits_and_errors() {
    assert!(gpu::parse_evidence_json(b"[]").is_err());
    assert!(gpu::parse_evidence_json(b"{").is_err());
    assert!(gpu::parse_evidence_json(&vec![b' '; 2 * 1024 * 1024]).is_err());
    let bad = br#"[{"arch":"HOPPER","evidence":"!!","certificate":""}]"#;
    assert!(gpu::parse_evidence_json(bad).is_err());
    // An unreadable report fails every check, with the reason.
    let ev = Evidence {
        arch: "HOPPER".into(),
        report: vec![0x11, 0xE0],
        cert_chain: read("nvtrust/hopperCertChain.txt"),
    };
    let o = verify(&[ev], None, &[], JUNE_2024);
    assert_eq!(o.failures().len(), gpu::CHECK_NAMES.len());
}

// ---- RIMs ----

#[test]
fn genuine_rims_verify_within_their_validity() {
    let root = gpu::rim_root();
    for (file, version, now) in [
        (
            "nvtrust/1010_0200_882_96005E0001_PROD.swidtag",
            "96.00.5E.00.01",
            JUNE_2024,
        ),
        (
            "nvtrust/g520_0200_885_9600740001_PROD.swidtag",
            "96.00.74.00.01",
            JUNE_2024,
        ),
        (
            "nvtrust/Driver_RIM_test_no_gpu.swidtag",
            "545.00",
            JUNE_2024,
        ),
        (
            "attestation-sdk/NV_GPU_DRIVER_GH100_550.144.03.xml",
            "550.144.03",
            JUNE_2025,
        ),
    ] {
        let rim = Rim::parse(&read(file)).unwrap();
        assert_eq!(rim.version, version);
        assert_eq!(rim.measurements.len(), 64, "{file}");
        let sig = rim
            .verify(&root, now)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(sig.signer.contains("HCC RIM L4 Signer"));
        assert!(sig.chain.last().unwrap().contains("CoRIM signing Root CA"));
    }
}

#[test]
fn expired_rim_signer_fails_gpu_measurements() {
    let rims = [read("nvtrust/1010_0200_882_96005E0001_PROD.swidtag")];
    let ev = evidence(
        "attestation-sdk/sample_hopperAttestationReport.txt",
        "attestation-sdk/sample_hopperCertChain.txt",
    );
    let o = verify(&[ev], None, &rims, JAN_2026);
    assert_eq!(status(&o, 0, "gpu_measurements"), Status::Fail);
    let d = detail(&o, 0, "gpu_measurements");
    assert!(
        d.contains("expired") && d.contains("HCC RIM L4 Signer"),
        "{d}"
    );
}

#[test]
fn rim_with_a_changed_measurement_fails_its_digest() {
    let text = String::from_utf8(read("nvtrust/1010_0200_882_96005E0001_PROD.swidtag")).unwrap();
    let needle = "c3f65ef79a19c029";
    assert!(text.contains(needle));
    let altered = text.replacen(needle, "c3f65ef79a19c028", 1);
    let rim = Rim::parse(altered.as_bytes()).unwrap();
    let e = rim.verify(&gpu::rim_root(), JUNE_2024).unwrap_err();
    assert!(e.contains("digest"), "{e}");
    // And through the verifier, on the report it would otherwise match.
    let ev = evidence(
        "attestation-sdk/sample_hopperAttestationReport.txt",
        "attestation-sdk/sample_hopperCertChain.txt",
    );
    let o = verify(&[ev], None, &[altered.into_bytes()], JUNE_2024);
    assert_eq!(status(&o, 0, "gpu_measurements"), Status::Fail);
}

#[test]
fn rim_with_a_broken_signature_fails() {
    // NVIDIA's broken fixture: same manifest, SignatureValue altered.
    let rim = Rim::parse(&read("attestation-sdk/incorrect_signature_driver_rim.xml")).unwrap();
    let e = rim.verify(&gpu::rim_root(), JUNE_2025).unwrap_err();
    assert!(e.contains("SignatureValue") || e.contains("digest"), "{e}");
    // A flipped byte in the SignatureValue of a genuine one.
    let text =
        String::from_utf8(read("attestation-sdk/NV_GPU_DRIVER_GH100_550.144.03.xml")).unwrap();
    let at = text.find("<ds:SignatureValue>").unwrap() + "<ds:SignatureValue>".len();
    let mut bytes = text.into_bytes();
    bytes[at + 3] = if bytes[at + 3] == b'A' { b'B' } else { b'A' };
    let e = Rim::parse(&bytes)
        .unwrap()
        .verify(&gpu::rim_root(), JUNE_2025)
        .unwrap_err();
    assert!(e.contains("SignatureValue"), "{e}");
}

#[test]
fn rim_signed_under_another_root_fails() {
    let rim = Rim::parse(&read("attestation-sdk/incorrect_cert_chain_driver_rim.xml")).unwrap();
    let e = rim.verify(&gpu::rim_root(), JUNE_2025).unwrap_err();
    assert!(
        e.contains("signer chain") || e.contains("SignatureValue"),
        "{e}"
    );
}

#[test]
fn a_rim_for_another_version_is_reported_not_used() {
    let rims = [read("nvtrust/Driver_RIM_test_no_gpu.swidtag")];
    let o = verify(&[nvtrust_hopper()], None, &rims, JUNE_2024);
    assert_eq!(status(&o, 0, "gpu_measurements"), Status::Unchecked);
    assert!(detail(&o, 0, "gpu_measurements").contains("545.00"));
}

#[test]
fn unreadable_rim_fails_gpu_measurements() {
    let o = verify(
        &[nvtrust_hopper()],
        None,
        &[b"<not-xml".to_vec()],
        JUNE_2024,
    );
    assert_eq!(status(&o, 0, "gpu_measurements"), Status::Fail);
    let o = verify(
        &[nvtrust_hopper()],
        None,
        &[b"<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>".to_vec()],
        JUNE_2024,
    );
    assert_eq!(status(&o, 0, "gpu_measurements"), Status::Fail);
}

// ---- the SPDM parser against NVIDIA's golden parse ----

fn golden_hex(v: &serde_json::Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap().trim_start_matches("0x")).unwrap()
}

#[test]
fn spdm_parser_matches_nvidia_golden_output() {
    // attestation-sdk's spdm_resp_test parses hopperAttestationReport.txt (request ‖
    // response) and compares with spdm_parsed_output.json.
    let report =
        SpdmReport::parse(&hex_file("attestation-sdk/hopperAttestationReport.txt")).unwrap();
    let golden: serde_json::Value =
        serde_json::from_slice(&read("attestation-sdk/spdm_parsed_output.json")).unwrap();
    let byte = |k: &str| golden_hex(&golden[k])[0];
    assert_eq!(report.spdm_version, byte("SPDMVersion"));
    assert_eq!(report.response_code, byte("RequestResponseCode"));
    assert_eq!(report.param1, byte("Param1"));
    assert_eq!(report.param2, byte("Param2"));
    assert_eq!(
        u64::from(report.number_of_blocks),
        golden["NumberOfBlocks"].as_u64().unwrap()
    );
    assert_eq!(
        report.measurement_record_length as u64,
        golden["MeasurementRecordLength"].as_u64().unwrap()
    );
    assert_eq!(report.response_nonce.to_vec(), golden_hex(&golden["Nonce"]));
    assert_eq!(
        report.opaque_length as u64,
        golden["OpaqueLength"].as_u64().unwrap()
    );
    assert_eq!(report.signature.to_vec(), golden_hex(&golden["Signature"]));
    let blocks = golden["MeasurementRecord"]["MeasurementBlocks"]
        .as_object()
        .unwrap();
    assert_eq!(blocks.len(), report.blocks.len());
    for (index, want) in blocks {
        let b = &report.blocks[&index.parse::<u8>().unwrap()];
        assert_eq!(
            u64::from(b.value_type),
            want["DMTFSpecMeasurementValueType"].as_u64().unwrap()
        );
        assert_eq!(
            b.value.len() as u64,
            want["DMTFSpecMeasurementValueSize"].as_u64().unwrap()
        );
        assert_eq!(
            b.value,
            golden_hex(&want["DMTFSpecMeasurementValue"]),
            "block {index}"
        );
    }
    let fields = golden["OpaqueData"]["OpaqueDataField"].as_object().unwrap();
    let id = |name: &str| -> u16 {
        use spdm::opaque::*;
        match name {
            "OPAQUE_FIELD_ID_VBIOS_VERSION" => VBIOS_VERSION,
            "OPAQUE_FIELD_ID_BOARD_ID" => BOARD_ID,
            "OPAQUE_FIELD_ID_CHIP_SKU" => CHIP_SKU,
            "OPAQUE_FIELD_ID_CHIP_SKU_MOD" => CHIP_SKU_MOD,
            "OPAQUE_FIELD_ID_PROJECT" => PROJECT,
            "OPAQUE_FIELD_ID_PROJECT_SKU" => PROJECT_SKU,
            "OPAQUE_FIELD_ID_PROJECT_SKU_MOD" => PROJECT_SKU_MOD,
            "OPAQUE_FIELD_ID_DRIVER_VERSION" => DRIVER_VERSION,
            "OPAQUE_FIELD_ID_GPU_INFO" => GPU_INFO,
            "OPAQUE_FIELD_ID_MSRSCNT" => MSRSCNT,
            "OPAQUE_FIELD_ID_CPRINFO" => CPRINFO,
            "OPAQUE_FIELD_ID_NVDEC0_STATUS" => NVDEC0_STATUS,
            "OPAQUE_FIELD_ID_FWID" => FWID,
            "OPAQUE_FIELD_ID_PROTECTED_PCIE_STATUS" => PROTECTED_PCIE_STATUS,
            other => panic!("unmapped golden field {other}"),
        }
    };
    for (name, want) in fields {
        if name == "OPAQUE_FIELD_ID_MSRSCNT" {
            let want: Vec<u32> = serde_json::from_value(want.clone()).unwrap();
            assert_eq!(report.msrscnt().unwrap(), want);
        } else {
            assert_eq!(
                report.opaque_field(id(name)).unwrap(),
                golden_hex(want),
                "{name}"
            );
        }
    }
    assert_eq!(report.driver_version().as_deref(), Some("580.159.03"));
    // Its chain (from the same folder) signs it.
    let o = verify(
        &[evidence(
            "attestation-sdk/hopperAttestationReport.txt",
            "attestation-sdk/hopperCertChain.txt",
        )],
        None,
        &[],
        JUNE_2024,
    );
    assert_eq!(status(&o, 0, "gpu_report_signature"), Status::Pass);
    assert_eq!(status(&o, 0, "gpu_fwid"), Status::Pass);
}

#[test]
fn every_truncation_of_a_real_report_is_refused() {
    let full = hex_file("nvtrust/hopperAttestationReport.txt");
    for n in 0..full.len() {
        assert!(SpdmReport::parse(&full[..n]).is_err(), "{n}");
    }
    assert!(SpdmReport::parse(&full).is_ok());
}

#[test]
fn gpu_nonce_derivation_is_what_docs_say() {
    use sha2::{Digest, Sha256};
    let client = [7u8; 16];
    let mut h = Sha256::new();
    h.update(b"cloister/attestation/gpu-nonce/v1");
    h.update(16u32.to_be_bytes());
    h.update(client);
    assert_eq!(gpu::gpu_nonce(&client).to_vec(), h.finalize().to_vec());
}
