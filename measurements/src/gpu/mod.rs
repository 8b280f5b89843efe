//! Offline verification of NVIDIA GPU confidential-computing evidence: the SPDM attestation
//! report each GPU signs, its device-identity certificate chain up to the pinned NVIDIA Device
//! Identity CA, and the golden measurements of NVIDIA's signed reference manifests (RIMs).
//!
//! Like the rest of this crate it does no I/O: the caller hands in the evidence, the RIMs,
//! the CRLs and the time. The result is a list of named checks per GPU, each `pass`, `fail`
//! or `unchecked`: something that could not be checked (no nonce given, no RIM for this
//! driver, no revocation data) is said so, never counted as a pass. Design and trust:
//! docs/gpu.md.
//!
//! What NVIDIA's own local verifier (nvtrust, attestation-sdk) does and this follows:
//! - the report's signature is ECDSA P-384 over SHA-384 of request ‖ response-without-
//!   signature, under the leaf key of the chain NVML returned;
//! - the chain's last certificate is replaced by the pinned root;
//! - the FWID opaque field must equal the FWID of the leaf's TCG DICE extension;
//! - the RIM measurement indices count from 0, the report's from 1; measurement 35 (RIM
//!   index) is compared only when the NVDEC0 status says the engine is enabled (0xAA);
//!   driver and VBIOS RIMs must not both claim one index; any alternative may match.

pub mod c14n;
pub mod cert;
pub mod rim;
pub mod spdm;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use cert::Cert;
pub use rim::Rim;
pub use spdm::Report as SpdmReport;

/// NVIDIA Device Identity CA (DER), the root every GPU's identity chains to; from NVIDIA's
/// public verifier (nvtrust, `verifier_device_root.pem`).
pub const NVIDIA_DEVICE_ROOT_DER: &[u8] = include_bytes!("nvidia_device_identity_ca.der");
/// The pinned device root's SHA-256 (a test checks the embedded copy against it).
pub const NVIDIA_DEVICE_ROOT_SHA256: &str =
    "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48";
/// NVIDIA CoRIM signing Root CA (DER), the root of the RIM signers; from nvtrust,
/// `verifier_RIM_root.pem`.
pub const NVIDIA_RIM_ROOT_DER: &[u8] = include_bytes!("nvidia_rim_root_ca.der");

/// Largest evidence list (JSON) accepted: 8 GPUs of about 14 KB each, with room.
pub const EVIDENCE_JSON_SIZE_MAX_BYTES: usize = 1024 * 1024;
/// Most GPUs in one evidence list (an HGX board has 8).
pub const GPUS_MAX: usize = 16;
/// Most RIMs and CRLs one verification takes.
pub const COLLATERAL_ITEMS_MAX: usize = 64;

/// NVDEC0 status values (opaque type 11) and protected-PCIe status (type 21).
const STATUS_ENABLED: u8 = 0xAA;
const STATUS_DISABLED: u8 = 0x55;
/// The RIM index of the NVDEC0 measurement.
const NVDEC0_MEASUREMENT_INDEX: u32 = 35;

/// The checks, in the order they are reported for each GPU.
pub const CHECK_NAMES: [&str; 8] = [
    "gpu_report_signature",
    "gpu_cert_chain",
    "gpu_fwid",
    "gpu_nonce",
    "gpu_mode",
    "gpu_driver",
    "gpu_measurements",
    "gpu_revocation",
];

fn title(name: &str) -> &'static str {
    match name {
        "gpu_report_signature" => "The GPU signed this report with its identity key",
        "gpu_cert_chain" => "The GPU's identity chains to the pinned NVIDIA Device Identity CA",
        "gpu_fwid" => "The report's firmware ID equals the one in the GPU's certificate",
        "gpu_nonce" => "The report answers this nonce (fresh)",
        "gpu_mode" => "The GPU is in confidential-computing mode",
        "gpu_driver" => "The driver version is the expected one",
        "gpu_measurements" => "Firmware and driver measurements match NVIDIA-signed values",
        "gpu_revocation" => "No certificate of the GPU's chain is revoked",
        _ => "unknown check",
    }
}

/// A check's outcome. `Unchecked` is not a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Unchecked,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Unchecked => "UNCHECKED",
        }
    }
}

/// One check on one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub title: &'static str,
    pub status: Status,
    pub expected: String,
    pub actual: String,
    pub detail: String,
}

fn check(
    name: &'static str,
    status: Status,
    expected: impl Into<String>,
    actual: impl Into<String>,
    detail: impl Into<String>,
) -> Check {
    Check {
        name,
        title: title(name),
        status,
        expected: expected.into(),
        actual: actual.into(),
        detail: detail.into(),
    }
}

/// One GPU's evidence: its report and the chain NVML returned with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// `HOPPER`, `BLACKWELL`, ...: what the collector said; informational.
    pub arch: String,
    /// SPDM request ‖ response.
    pub report: Vec<u8>,
    /// The PEM chain, leaf first.
    pub cert_chain: Vec<u8>,
}

/// NVIDIA's serialized evidence item (attestation-sdk): `{arch, nonce, evidence, certificate}`
/// with the report and the PEM chain in base64.
#[derive(Debug, Deserialize)]
struct SerializedEvidence {
    arch: String,
    #[serde(default)]
    nonce: Option<String>,
    evidence: String,
    certificate: String,
}

/// Reads NVIDIA's serialized evidence list: `[{arch, nonce, evidence, certificate}]`. The
/// `nonce` field is what the collector claims and is not trusted (the report's own nonce is
/// what [`verify`] compares); it is returned for display.
pub fn parse_evidence_json(bytes: &[u8]) -> Result<(Vec<Evidence>, Option<String>), String> {
    if bytes.len() > EVIDENCE_JSON_SIZE_MAX_BYTES {
        return Err(format!(
            "the evidence is {} bytes, more than the {EVIDENCE_JSON_SIZE_MAX_BYTES} accepted",
            bytes.len()
        ));
    }
    let items: Vec<SerializedEvidence> =
        serde_json::from_slice(bytes).map_err(|e| format!("the evidence is not readable: {e}"))?;
    if items.is_empty() {
        return Err("the evidence list is empty".to_owned());
    }
    if items.len() > GPUS_MAX {
        return Err(format!(
            "the evidence lists {} GPUs, more than the {GPUS_MAX} accepted",
            items.len()
        ));
    }
    let nonce = items.first().and_then(|i| i.nonce.clone());
    let evidence = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let report = cert::base64_decode(&item.evidence)
                .map_err(|e| format!("GPU {i}: evidence: {e}"))?;
            let cert_chain = cert::base64_decode(&item.certificate)
                .map_err(|e| format!("GPU {i}: certificate: {e}"))?;
            Ok(Evidence {
                arch: item.arch,
                report,
                cert_chain,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((evidence, nonce))
}

/// The GPU nonce a box uses for a client's `?nonce=`: SHA-256("cloister/attestation/gpu-
/// nonce/v1" ‖ len32(nonce) ‖ nonce), len32 big-endian. Any client nonce length maps to the
/// GPU's 32 bytes, and the client can recompute it.
pub fn gpu_nonce(client_nonce: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cloister/attestation/gpu-nonce/v1");
    h.update((client_nonce.len() as u32).to_be_bytes());
    h.update(client_nonce);
    h.finalize().into()
}

/// Everything a verification needs, from the caller.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub evidence: &'a [Evidence],
    /// The 32-byte nonce the GPUs must have signed; without it freshness is unchecked.
    pub nonce: Option<&'a [u8]>,
    /// Reference manifests (driver and VBIOS RIMs), XML.
    pub rims: &'a [Vec<u8>],
    /// The driver version the image pins (`measurements.json`); without it the driver RIM's
    /// version is the reference, and without either the driver check is unchecked.
    pub expected_driver: Option<&'a str>,
    /// CRLs (DER) for the device chain.
    pub crls: &'a [Vec<u8>],
    /// Accept a CRL past its next update (the owner's opt-in, as for Intel collateral).
    pub allow_stale_revocation: bool,
    /// Seconds since the Unix epoch.
    pub now_unix_s: u64,
}

/// The checks of one GPU, and what its report says.
#[derive(Debug, Clone, Serialize)]
pub struct GpuOutcome {
    pub index: usize,
    pub arch: String,
    pub driver_version: String,
    pub vbios_version: String,
    /// `gpu-cc` or `gpu-ppcie` when the mode check passed, else empty.
    pub compute: String,
    pub checks: Vec<Check>,
}

impl GpuOutcome {
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// The outcome of verifying one evidence list.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Every check of every GPU passed.
    pub ok: bool,
    /// Some check failed (as opposed to only unchecked ones).
    pub failed: bool,
    pub gpus: Vec<GpuOutcome>,
    /// Set when the inputs could not be used at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Outcome {
    /// Names of failed checks, as `gpuN:name`.
    pub fn failures(&self) -> Vec<String> {
        self.gpus
            .iter()
            .flat_map(|g| {
                g.checks
                    .iter()
                    .filter(|c| c.status == Status::Fail)
                    .map(move |c| format!("gpu{}:{}", g.index, c.name))
            })
            .collect()
    }
}

/// The pinned NVIDIA Device Identity CA.
pub fn device_root() -> Cert {
    Cert::from_der(NVIDIA_DEVICE_ROOT_DER).expect("the embedded device root parses (tested)")
}

/// The pinned NVIDIA RIM root.
pub fn rim_root() -> Cert {
    Cert::from_der(NVIDIA_RIM_ROOT_DER).expect("the embedded RIM root parses (tested)")
}

/// Verifies every GPU's evidence against the pinned NVIDIA roots.
pub fn verify(inputs: &Inputs<'_>) -> Outcome {
    verify_with_roots(inputs, &device_root(), &rim_root())
}

/// [`verify`] with other roots (tests: "a chain to another root").
pub fn verify_with_roots(inputs: &Inputs<'_>, device_root: &Cert, rim_root: &Cert) -> Outcome {
    let fail_all = |error: String| Outcome {
        ok: false,
        failed: true,
        gpus: Vec::new(),
        error: Some(error),
    };
    if inputs.evidence.is_empty() {
        return fail_all("no GPU evidence".to_owned());
    }
    if inputs.evidence.len() > GPUS_MAX {
        return fail_all(format!("more than {GPUS_MAX} GPUs"));
    }
    if inputs.rims.len() + inputs.crls.len() > COLLATERAL_ITEMS_MAX {
        return fail_all(format!("more than {COLLATERAL_ITEMS_MAX} RIMs and CRLs"));
    }
    if let Some(n) = inputs.nonce
        && n.len() != spdm::NONCE_SIZE_BYTES
    {
        return fail_all(format!(
            "the expected GPU nonce is {} bytes, not {}",
            n.len(),
            spdm::NONCE_SIZE_BYTES
        ));
    }
    let rims = load_rims(inputs, rim_root);
    let crls: Vec<Result<cert::Crl, String>> =
        inputs.crls.iter().map(|c| cert::Crl::from_der(c)).collect();
    let mut gpus: Vec<GpuOutcome> = inputs
        .evidence
        .iter()
        .enumerate()
        .map(|(i, e)| verify_one(i, e, inputs, device_root, &rims, &crls))
        .collect();
    // One mode for all: no mix of single-GPU, multi-GPU and protected-PCIe reports.
    let modes: std::collections::BTreeSet<String> = gpus
        .iter()
        .filter_map(|g| g.check("gpu_mode").filter(|c| c.status == Status::Pass))
        .map(|c| c.actual.clone())
        .collect();
    if modes.len() > 1 {
        for g in &mut gpus {
            if let Some(c) = g.checks.iter_mut().find(|c| c.name == "gpu_mode") {
                c.status = Status::Fail;
                c.detail = format!("the GPUs report different modes: {modes:?}");
            }
        }
    }
    let all = || gpus.iter().flat_map(|g| g.checks.iter());
    let ok = all().all(|c| c.status == Status::Pass);
    let failed = all().any(|c| c.status == Status::Fail);
    Outcome {
        ok,
        failed,
        gpus,
        error: None,
    }
}

/// A RIM as given, parsed and signature-checked.
struct LoadedRim {
    rim: Result<Rim, String>,
    signature: Result<rim::RimSignature, String>,
}

fn load_rims(inputs: &Inputs<'_>, rim_root: &Cert) -> Vec<LoadedRim> {
    inputs
        .rims
        .iter()
        .map(|bytes| {
            let rim = Rim::parse(bytes);
            let signature = match &rim {
                Ok(r) => r.verify(rim_root, inputs.now_unix_s),
                Err(e) => Err(e.clone()),
            };
            LoadedRim { rim, signature }
        })
        .collect()
}

fn verify_one(
    index: usize,
    evidence: &Evidence,
    inputs: &Inputs<'_>,
    device_root: &Cert,
    rims: &[LoadedRim],
    crls: &[Result<cert::Crl, String>],
) -> GpuOutcome {
    let mut out = GpuOutcome {
        index,
        arch: evidence.arch.clone(),
        driver_version: String::new(),
        vbios_version: String::new(),
        compute: String::new(),
        checks: Vec::new(),
    };
    let report = match SpdmReport::parse(&evidence.report) {
        Ok(r) => r,
        Err(e) => {
            let why = format!("the attestation report is unreadable: {e}");
            out.checks = CHECK_NAMES
                .iter()
                .map(|&n| check(n, Status::Fail, "", "", why.clone()))
                .collect();
            return out;
        }
    };
    out.driver_version = report.driver_version().unwrap_or_default();
    out.vbios_version = report.vbios_version().unwrap_or_default();
    let chain = cert::parse_pem_chain(&evidence.cert_chain);

    // gpu_report_signature
    out.checks.push(match &chain {
        Err(e) => check(
            "gpu_report_signature",
            Status::Fail,
            "a signature by the leaf certificate's key",
            "",
            format!("the certificate chain is unreadable: {e}"),
        ),
        Ok(chain) => {
            let leaf = &chain[0];
            let result = leaf.p384_key().and_then(|k| {
                cert::verify_raw_p384_sha384(&k, report.signed_bytes(), &report.signature)
            });
            match result {
                Ok(()) => check(
                    "gpu_report_signature",
                    Status::Pass,
                    format!("signed by {}", leaf.subject),
                    "ECDSA P-384 / SHA-384 signature holds",
                    format!("{} signed bytes", report.signed_bytes().len()),
                ),
                Err(e) => check(
                    "gpu_report_signature",
                    Status::Fail,
                    format!("signed by {}", leaf.subject),
                    e,
                    "the report was altered, or another GPU's chain was sent with it",
                ),
            }
        }
    });

    // gpu_cert_chain
    let expected_root = format!(
        "{} (SHA-256 {})",
        device_root.subject,
        device_root.sha256_hex()
    );
    out.checks.push(match &chain {
        Err(e) => check("gpu_cert_chain", Status::Fail, expected_root, "", e.clone()),
        Ok(chain) => match cert::verify_chain(chain, device_root, inputs.now_unix_s) {
            Ok(c) => check(
                "gpu_cert_chain",
                Status::Pass,
                expected_root,
                c.subjects.join(" → "),
                if c.presented_root_matches {
                    "every certificate valid now and signed by the next"
                } else {
                    "every certificate valid now and signed by the next (the chain's own \
                     last certificate was replaced by the pinned root)"
                },
            ),
            Err(e) => check("gpu_cert_chain", Status::Fail, expected_root, "", e),
        },
    });

    // gpu_fwid
    let report_fwid = report.opaque_field(spdm::opaque::FWID).map(hex::encode);
    out.checks.push(match (&chain, &report_fwid) {
        (Err(e), _) => check("gpu_fwid", Status::Fail, "", "", e.clone()),
        (_, None) => check(
            "gpu_fwid",
            Status::Fail,
            "the FWID of the leaf certificate",
            "",
            "the report carries no FWID (opaque field 20): the driver is too old to bind \
             the firmware to the certificate",
        ),
        (Ok(chain), Some(fwid)) => match cert::leaf_fwid(&chain[0]) {
            Ok(Some(cert_fwid)) => {
                let cert_fwid = hex::encode(cert_fwid);
                let ok = &cert_fwid == fwid;
                check(
                    "gpu_fwid",
                    if ok { Status::Pass } else { Status::Fail },
                    cert_fwid,
                    fwid.clone(),
                    if ok {
                        "the firmware that signed is the one the certificate was issued to"
                    } else {
                        "the report's FWID differs from the certificate's"
                    },
                )
            }
            Ok(None) => check(
                "gpu_fwid",
                Status::Fail,
                "",
                fwid.clone(),
                "the leaf certificate has no TCG DICE FWID extension",
            ),
            Err(e) => check("gpu_fwid", Status::Fail, "", fwid.clone(), e),
        },
    });

    // gpu_nonce
    let actual_nonce = hex::encode(report.request_nonce);
    out.checks.push(match inputs.nonce {
        None => check(
            "gpu_nonce",
            Status::Unchecked,
            "",
            actual_nonce,
            "no nonce given: the report may be a replay",
        ),
        Some(n) if n == report.request_nonce => check(
            "gpu_nonce",
            Status::Pass,
            hex::encode(n),
            actual_nonce,
            "the signed request carries this nonce",
        ),
        Some(n) => check(
            "gpu_nonce",
            Status::Fail,
            hex::encode(n),
            actual_nonce,
            "the GPU answered another nonce: a replayed or stale report",
        ),
    });

    // gpu_mode
    let mode = mode_check(&report);
    if mode.status == Status::Pass {
        out.compute = mode.actual.split(' ').next().unwrap_or("").to_owned();
    }
    out.checks.push(mode);

    // gpu_driver
    let driver_rim_version = rims
        .iter()
        .filter_map(|r| r.rim.as_ref().ok())
        .find(|r| r.version == out.driver_version)
        .map(|r| r.version.clone());
    let expected_driver = inputs.expected_driver.map(str::to_owned);
    out.checks
        .push(match (&expected_driver, report.driver_version()) {
            (_, None) => check(
                "gpu_driver",
                Status::Fail,
                expected_driver.clone().unwrap_or_default(),
                "",
                "the report carries no driver version",
            ),
            (Some(want), Some(got)) => check(
                "gpu_driver",
                if *want == got {
                    Status::Pass
                } else {
                    Status::Fail
                },
                want.clone(),
                got,
                "the driver version pinned by the image",
            ),
            (None, Some(got)) => match driver_rim_version {
                Some(v) => check(
                    "gpu_driver",
                    Status::Unchecked,
                    v,
                    got,
                    "no pinned driver version given; a driver RIM for this version was given, \
                 which says only that NVIDIA published it",
                ),
                None => check(
                    "gpu_driver",
                    Status::Unchecked,
                    "",
                    got,
                    "no pinned driver version given",
                ),
            },
        });

    // gpu_measurements
    out.checks.push(measurements_check(&report, &out, rims));

    // gpu_revocation
    out.checks.push(match &chain {
        Err(e) => check("gpu_revocation", Status::Fail, "", "", e.clone()),
        Ok(chain) => revocation_check(chain, device_root, crls, inputs),
    });
    out
}

fn mode_check(report: &SpdmReport) -> Check {
    let ppcie = report
        .opaque_field(spdm::opaque::PROTECTED_PCIE_STATUS)
        .and_then(|v| v.first().copied());
    let ppcie_text = match ppcie {
        Some(STATUS_ENABLED) => "protected PCIe on",
        Some(STATUS_DISABLED) => "protected PCIe off",
        Some(_) => "protected PCIe status unknown",
        None => "no protected-PCIe status",
    };
    let expected = "gpu-cc (single or multi-GPU passthrough) or gpu-ppcie";
    let version = report.opaque_data_version();
    let flag = report.feature_flag();
    match (version, flag) {
        (Some(v), Some(flag)) if v >= 1 => match (flag, ppcie) {
            (0 | 1, None | Some(STATUS_DISABLED)) => check(
                "gpu_mode",
                Status::Pass,
                expected,
                format!(
                    "gpu-cc ({}; {ppcie_text})",
                    if flag == 1 {
                        "single-GPU passthrough"
                    } else {
                        "multi-GPU passthrough"
                    }
                ),
                "the GPU reports confidential-computing mode in its signed report",
            ),
            (2, Some(STATUS_ENABLED)) => check(
                "gpu_mode",
                Status::Pass,
                expected,
                format!("gpu-ppcie ({ppcie_text})"),
                "protected PCIe: traffic between GPUs over NVLink is not encrypted",
            ),
            _ => check(
                "gpu_mode",
                Status::Fail,
                expected,
                format!("feature flag {flag}, {ppcie_text}"),
                "the feature flag and the protected-PCIe status disagree or are unknown",
            ),
        },
        _ => check(
            "gpu_mode",
            Status::Unchecked,
            expected,
            format!("no feature flag ({ppcie_text})"),
            "the report does not state its mode (opaque data version below 1): the driver \
             is too old; only that NVML produced a report says CC is on",
        ),
    }
}

fn measurements_check(report: &SpdmReport, gpu: &GpuOutcome, rims: &[LoadedRim]) -> Check {
    let name = "gpu_measurements";
    let find = |version: &str| {
        rims.iter().find(|r| {
            r.rim
                .as_ref()
                .is_ok_and(|rim| !version.is_empty() && rim.version.eq_ignore_ascii_case(version))
        })
    };
    let driver = find(&gpu.driver_version);
    let vbios = find(&gpu.vbios_version);
    let expected = format!(
        "driver RIM {} and VBIOS RIM {}",
        gpu.driver_version, gpu.vbios_version
    );
    // Unreadable RIMs and RIMs for neither version are reported, not silently ignored.
    let mut notes = Vec::new();
    for (i, r) in rims.iter().enumerate() {
        match &r.rim {
            Err(e) => return check(name, Status::Fail, expected, "", format!("RIM {i}: {e}")),
            Ok(rim)
                if !rim.version.eq_ignore_ascii_case(&gpu.driver_version)
                    && !rim.version.eq_ignore_ascii_case(&gpu.vbios_version) =>
            {
                notes.push(format!("RIM {i} ({}) is for neither", rim.version));
            }
            Ok(_) => {}
        }
    }
    let mut used = Vec::new();
    for (kind, loaded) in [("driver", driver), ("VBIOS", vbios)] {
        let Some(loaded) = loaded else { continue };
        match &loaded.signature {
            Ok(sig) => used.push((kind, loaded, sig)),
            Err(e) => {
                return check(
                    name,
                    Status::Fail,
                    expected,
                    "",
                    format!("the {kind} RIM's signature does not hold: {e}"),
                );
            }
        }
    }
    if used.is_empty() {
        notes.insert(0, "no RIM for this driver or VBIOS was given".to_owned());
        return check(name, Status::Unchecked, expected, "", notes.join("; "));
    }
    // Active golden measurements by RIM index, each owned by one RIM.
    let mut golden: std::collections::BTreeMap<u32, (&str, &rim::GoldenMeasurement)> =
        Default::default();
    for (kind, loaded, _) in &used {
        let Ok(r) = &loaded.rim else { continue };
        for m in r.measurements.values().filter(|m| m.active) {
            if let Some((other, _)) = golden.insert(m.index, (kind, m)) {
                return check(
                    name,
                    Status::Fail,
                    expected,
                    "",
                    format!(
                        "the {other} and {kind} RIMs both claim measurement {}",
                        m.index
                    ),
                );
            }
        }
    }
    let skip_nvdec0 = report.nvdec0_status() == Some(STATUS_DISABLED);
    let mut mismatches = Vec::new();
    let mut compared = 0usize;
    for (&index, (kind, m)) in &golden {
        if index == NVDEC0_MEASUREMENT_INDEX && skip_nvdec0 {
            continue;
        }
        compared += 1;
        let block = u8::try_from(index + 1)
            .ok()
            .and_then(|b| report.blocks.get(&b));
        match block {
            Some(b) if m.alternatives.contains(&b.value) => {}
            Some(b) => mismatches.push(format!(
                "{index} ({kind} {}): {} not in the RIM",
                m.name,
                hex::encode(&b.value)
            )),
            None => mismatches.push(format!("{index} ({kind}): missing from the report")),
        }
    }
    let signers: Vec<String> = used
        .iter()
        .map(|(kind, _, sig)| {
            format!(
                "{kind} RIM signed by {} (until {})",
                sig.signer,
                cert::unix_to_rfc3339(sig.signer_not_after)
            )
        })
        .collect();
    let actual = format!("{compared} active measurements compared");
    if !mismatches.is_empty() {
        return check(
            name,
            Status::Fail,
            expected,
            actual,
            format!("mismatched: {}", mismatches.join("; ")),
        );
    }
    let missing: Vec<&str> = [("driver", driver), ("VBIOS", vbios)]
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(k, _)| *k)
        .collect();
    let mut detail = signers.join("; ");
    if skip_nvdec0 {
        detail.push_str("; measurement 35 skipped (NVDEC0 disabled)");
    }
    for n in notes {
        detail.push_str("; ");
        detail.push_str(&n);
    }
    if missing.is_empty() {
        check(name, Status::Pass, expected, actual, detail)
    } else {
        check(
            name,
            Status::Unchecked,
            expected,
            actual,
            format!(
                "all compared match, but no {} RIM was given, so its measurements are not \
                 compared; {detail}",
                missing.join(" or ")
            ),
        )
    }
}

fn revocation_check(
    chain: &[Cert],
    device_root: &Cert,
    crls: &[Result<cert::Crl, String>],
    inputs: &Inputs<'_>,
) -> Check {
    let name = "gpu_revocation";
    // The certificates below the root, each with its issuer (the next one, or the root).
    let below_root: Vec<&Cert> = chain.iter().filter(|c| c.der != device_root.der).collect();
    let expected = "no certificate revoked, from fresh OCSP responses or CRLs";
    for (i, c) in crls.iter().enumerate() {
        if let Err(e) = c {
            return check(name, Status::Fail, expected, "", format!("CRL {i}: {e}"));
        }
    }
    let mut covered = Vec::new();
    let mut uncovered = Vec::new();
    for (i, cert) in below_root.iter().enumerate() {
        let issuer = below_root.get(i + 1).copied().unwrap_or(device_root);
        let crl = crls
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .find(|crl| crl.verify_issued_by(issuer).is_ok());
        let Some(crl) = crl else {
            uncovered.push(cert.subject.clone());
            continue;
        };
        let now = inputs.now_unix_s;
        let stale = crl.next_update.is_none_or(|n| now > n) || now < crl.this_update;
        if stale && !inputs.allow_stale_revocation {
            return check(
                name,
                Status::Fail,
                expected,
                format!("the CRL of {} is stale", issuer.subject),
                "a CRL past its next update fails unless the owner allows stale revocation data",
            );
        }
        if crl.revokes(cert.serial()) {
            return check(
                name,
                Status::Fail,
                expected,
                format!("{} is revoked", cert.subject),
                format!("listed in the CRL of {}", issuer.subject),
            );
        }
        covered.push(cert.subject.clone());
    }
    if uncovered.is_empty() {
        check(
            name,
            Status::Pass,
            expected,
            format!("{} certificates not revoked", covered.len()),
            "every certificate below the root is covered by a signed, fresh CRL",
        )
    } else {
        check(
            name,
            Status::Unchecked,
            expected,
            format!(
                "{} of {} certificates covered",
                covered.len(),
                below_root.len()
            ),
            format!(
                "no revocation data for: {} (NVIDIA publishes OCSP for device certificates; \
                 stapled OCSP responses are not read yet)",
                uncovered.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_roots_parse_and_are_the_pinned_ones() {
        assert_eq!(device_root().sha256_hex(), NVIDIA_DEVICE_ROOT_SHA256);
        assert!(rim_root().subject.contains("NVIDIA CoRIM signing Root CA"));
    }

    #[test]
    fn gpu_nonce_is_length_prefixed() {
        assert_ne!(gpu_nonce(b"ab"), gpu_nonce(b"a"));
        let mut h = Sha256::new();
        h.update(b"cloister/attestation/gpu-nonce/v1\x00\x00\x00\x02ab");
        assert_eq!(gpu_nonce(b"ab"), <[u8; 32]>::from(h.finalize()));
    }
}
