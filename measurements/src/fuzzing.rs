//! Entry points for the fuzz targets in `fuzz/` (and for the stable tests that run them on
//! mutated real data): each feeds arbitrary bytes to one parser of outside bytes and checks
//! what must hold for any input. Not part of the API; never does I/O.

use crate::eventlog::EventLog;
use crate::pe::authenticode_sha384;
use crate::quote::{Collateral, CollateralFiles, Quote, verify};
use crate::tdvf::{PageOrder, Tdvf};

fn v4_collateral() -> Collateral {
    // Real collateral, so that mutated quotes reach the deepest checks.
    let files = CollateralFiles {
        tcb_info: include_bytes!("../tests/data/go-tdx-guest/collateral-v4/tcb_info.json"),
        qe_identity: include_bytes!("../tests/data/go-tdx-guest/collateral-v4/qe_identity.json"),
        pck_crl: include_bytes!("../tests/data/go-tdx-guest/collateral-v4/pck_crl.der"),
        root_ca_crl: include_bytes!("../tests/data/go-tdx-guest/collateral-v4/root_ca_crl.der"),
        pck_crl_issuer_chain: include_bytes!(
            "../tests/data/go-tdx-guest/collateral-v4/pck_crl_issuer_chain.pem"
        ),
        tcb_info_issuer_chain: include_bytes!(
            "../tests/data/go-tdx-guest/collateral-v4/tcb_info_issuer_chain.pem"
        ),
        qe_identity_issuer_chain: include_bytes!(
            "../tests/data/go-tdx-guest/collateral-v4/qe_identity_issuer_chain.pem"
        ),
    };
    match Collateral::from_files(files) {
        Ok(c) => c,
        Err(e) => panic!("the bundled collateral must parse: {e}"),
    }
}

/// Quotes: parsing never panics; a quote that verifies also parses, to the same report.
pub fn quote(data: &[u8]) {
    let parsed = Quote::parse(data);
    // 2023-07-01T01:00:00Z, inside the bundled collateral's validity.
    if let Ok(verdict) = verify(data, &v4_collateral(), 1_688_173_200) {
        match parsed {
            Ok(q) => assert_eq!(q.report, verdict.td),
            Err(e) => panic!("verified but does not parse: {e}"),
        }
    }
}

/// Event logs: parsing never panics, and replay only extends RTMR events.
pub fn eventlog(data: &[u8]) {
    if let Ok(log) = EventLog::parse(data) {
        let _ = log.replay();
        for e in &log.events {
            assert!(e.mr_index <= 4);
        }
    }
}

/// TDVF metadata: parsing never panics; MRTD is computed for any image that parses.
pub fn tdvf(data: &[u8]) {
    if let Ok(t) = Tdvf::parse(data) {
        let _ = t.cfv_digest();
        // Bounded: every section is at most SECTION_MEMORY_SIZE_MAX_BYTES.
        if t.sections.iter().map(|s| s.memory_data_size).sum::<u64>() <= 1 << 24 {
            let _ = t.mrtd(PageOrder::OnePass);
        }
    }
}

/// PE images: the Authenticode digest never panics.
pub fn pe(data: &[u8]) {
    let _ = authenticode_sha384(data);
}

/// GPU attestation reports (SPDM): parsing never panics; a report that parses is verified
/// against a real H100 chain (signature, FWID, opaque fields), which must not panic either,
/// and a mutated report never passes the signature check.
pub fn gpu_spdm(data: &[u8]) {
    use crate::gpu::{self, Evidence, Inputs, Status};
    let Ok(report) = gpu::SpdmReport::parse(data) else {
        return;
    };
    assert_eq!(
        report.signed_bytes().len() + gpu::spdm::SIGNATURE_SIZE_BYTES,
        data.len()
    );
    let _ = (
        report.driver_version(),
        report.vbios_version(),
        report.msrscnt(),
    );
    let evidence = [Evidence {
        arch: "HOPPER".to_owned(),
        report: data.to_vec(),
        cert_chain: include_bytes!("../tests/data/nvidia/nvtrust/hopperCertChain.txt").to_vec(),
    }];
    let outcome = gpu::verify(&Inputs {
        evidence: &evidence,
        nonce: Some(&[0u8; 32]),
        rims: &[],
        expected_driver: None,
        crls: &[],
        allow_stale_revocation: false,
        now_unix_s: 1_717_200_000,
    });
    let genuine = hex_seed_matches(data);
    let signature = outcome.gpus[0]
        .check("gpu_report_signature")
        .map(|c| c.status);
    assert!(genuine || signature != Some(Status::Pass));
}

fn hex_seed_matches(data: &[u8]) -> bool {
    let seed = include_str!("../tests/data/nvidia/nvtrust/hopperAttestationReport.txt");
    hex::decode(seed.trim()).is_ok_and(|s| s == data)
}

/// RIMs (XML): parsing and signature verification never panic.
pub fn gpu_rim(data: &[u8]) {
    if let Ok(rim) = crate::gpu::Rim::parse(data) {
        let _ = rim.verify(&crate::gpu::rim_root(), 1_717_200_000);
    }
}

#[cfg(test)]
mod tests {
    //! The fuzz bodies on real seeds and cheap deterministic mutations of them.

    use super::*;

    fn mutations(seed: &[u8], positions: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
        let step = (seed.len() / positions).max(1);
        (0..seed.len()).step_by(step).flat_map(move |pos| {
            [0x00u8, 0xff, 0x80].into_iter().map(move |v| {
                let mut m = seed.to_vec();
                m[pos] = v;
                m
            })
        })
    }

    #[test]
    fn fuzz_bodies_survive_mutated_real_data() {
        let q = include_bytes!("../tests/data/go-tdx-guest/tdx_prod_quote_SPR_E4.dat");
        for m in mutations(q, 24) {
            quote(&m);
        }
        quote(q);
        let log = include_bytes!("../tests/data/go-tdx-guest/ccel/ccel_data.dat");
        let used = &log[..18_200];
        for m in mutations(used, 150) {
            eventlog(&m);
        }
        let fw = crate::tdvf::tests::synthetic_firmware();
        for m in mutations(&fw, 600) {
            tdvf(&m);
        }
        let image = crate::pe::tests::synthetic_pe(9, 32);
        for m in mutations(&image, 600) {
            pe(&m);
        }
        let report = include_str!("../tests/data/nvidia/nvtrust/hopperAttestationReport.txt");
        let report = hex::decode(report.trim()).unwrap_or_default();
        gpu_spdm(&report);
        for m in mutations(&report, 50) {
            gpu_spdm(&m);
        }
        let rim =
            include_bytes!("../tests/data/nvidia/nvtrust/1010_0200_882_96005E0001_PROD.swidtag");
        for m in mutations(rim, 15) {
            gpu_rim(&m);
        }
    }
}
