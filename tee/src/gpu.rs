//! The guest side of GPU attestation: NVIDIA's management library (NVML) loaded at run time,
//! the confidential-computing state checked (CC on, DevTools off, production), evidence
//! collected from every GPU with a given nonce, verified with the same verifier the clients
//! run (`cloister_measurements::gpu`), and only then the GPUs' ready state set: a CC-mode GPU
//! accepts no work until it is, so a failure here keeps CUDA closed (fail closed).
//!
//! NVML is opened with `dlopen` (`libnvidia-ml.so.1`, or a path given), never linked: the
//! image without a GPU has no such library, and a build needs none. About a dozen symbols are
//! used; their C layouts are those of NVIDIA's `nvml.h` (CUDA 12.x), written out below.
//! Tests run this against a fake library with the same symbols (tee/tests/fake_nvml), which
//! serves NVIDIA's published evidence.

use std::ffi::{CStr, c_char, c_uint, c_void};
use std::path::Path;

use cloister_measurements::gpu::{self, Evidence, Inputs, Outcome, Status};

/// The library NVIDIA's driver installs.
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// The checks that must pass before the GPUs are let work; the others may be `unchecked`
/// (said so in the outcome) but none may fail.
pub const REQUIRED_CHECKS: [&str; 5] = [
    "gpu_report_signature",
    "gpu_cert_chain",
    "gpu_fwid",
    "gpu_nonce",
    "gpu_mode",
];

/// Why GPU attestation did not happen or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("cannot load NVML ({path}): {reason}")]
    Load { path: String, reason: String },
    #[error("{call} failed: NVML error {code} ({text})")]
    Nvml {
        call: &'static str,
        code: u32,
        text: String,
    },
    #[error("GPU attestation refused: {0}")]
    Refused(String),
}

/// `nvmlConfComputeSystemState_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CcState {
    /// 0 unavailable, 1 simulation, 2 production.
    pub environment: c_uint,
    /// 0 disabled, 1 enabled.
    pub cc_feature: c_uint,
    /// 0 off, 1 on (DevTools: the GPU's memory is readable by debugging tools).
    pub devtools_mode: c_uint,
}

impl CcState {
    /// CC on, DevTools off, production environment; else why not.
    pub fn check(&self) -> Result<(), String> {
        let mut why = Vec::new();
        if self.cc_feature != 1 {
            why.push(format!(
                "confidential computing is off (ccFeature {})",
                self.cc_feature
            ));
        }
        if self.devtools_mode != 0 {
            why.push("DevTools mode is on: the GPU's memory is open to debugging".to_owned());
        }
        if self.environment != 2 {
            why.push(format!(
                "the environment is not production (environment {})",
                self.environment
            ));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }
}

/// `nvmlConfComputeGpuCertificate_t`.
#[repr(C)]
struct GpuCertificate {
    cert_chain_size: c_uint,
    attestation_cert_chain_size: c_uint,
    cert_chain: [u8; 0x1000],
    attestation_cert_chain: [u8; 0x1400],
}

/// `nvmlConfComputeGpuAttestationReport_t`.
#[repr(C)]
struct GpuAttestationReport {
    is_cec_attestation_report_present: c_uint,
    attestation_report_size: c_uint,
    cec_attestation_report_size: c_uint,
    nonce: [u8; 32],
    attestation_report: [u8; 0x2000],
    cec_attestation_report: [u8; 0x1000],
}

type Device = *mut c_void;
type FnVoid = unsafe extern "C" fn() -> u32;
type FnU32Out = unsafe extern "C" fn(*mut c_uint) -> u32;
type FnU32In = unsafe extern "C" fn(c_uint) -> u32;
type FnHandle = unsafe extern "C" fn(c_uint, *mut Device) -> u32;
type FnState = unsafe extern "C" fn(*mut CcState) -> u32;
type FnCert = unsafe extern "C" fn(Device, *mut GpuCertificate) -> u32;
type FnReport = unsafe extern "C" fn(Device, *mut GpuAttestationReport) -> u32;
type FnErrorString = unsafe extern "C" fn(u32) -> *const c_char;

/// NVML, loaded and initialized. Shut down on drop.
pub struct Nvml {
    shutdown: FnVoid,
    error_string: FnErrorString,
    device_count: FnU32Out,
    handle_by_index: FnHandle,
    cc_state: FnState,
    certificate: FnCert,
    report: FnReport,
    set_ready: FnU32In,
    get_ready: FnU32Out,
    // Last: the function pointers above are valid only while the library stays loaded.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nvml")
    }
}

/// Looks up one symbol as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the symbol's true C signature.
#[allow(unsafe_code)]
unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, GpuError> {
    // SAFETY: the caller guarantees the type; the pointer is copied out and used only while
    // `lib` is alive (Nvml keeps it).
    let sym = unsafe { lib.get::<T>(name) }.map_err(|e| GpuError::Load {
        path: name.to_owned(),
        reason: format!("missing symbol {name}: {e}"),
    })?;
    Ok(*sym)
}

impl Nvml {
    /// Opens NVML (`path`, or [`NVML_LIBRARY`] from the loader's search path) and calls
    /// `nvmlInit_v2`.
    #[allow(unsafe_code)]
    pub fn load(path: Option<&Path>) -> Result<Self, GpuError> {
        let shown = path.map_or(NVML_LIBRARY.to_owned(), |p| p.display().to_string());
        // SAFETY: loading a shared library runs its initializers; NVML's are NVIDIA's driver
        // code, which is part of the measured image (or, in tests, the fake).
        let lib = unsafe {
            match path {
                Some(p) => libloading::Library::new(p),
                None => libloading::Library::new(NVML_LIBRARY),
            }
        }
        .map_err(|e| GpuError::Load {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        // SAFETY: each type below is the C signature from nvml.h of the named function.
        let nvml = unsafe {
            let init: FnVoid = symbol(&lib, "nvmlInit_v2")?;
            let rc = init();
            let error_string: FnErrorString = symbol(&lib, "nvmlErrorString")?;
            if rc != 0 {
                return Err(nvml_error(error_string, "nvmlInit_v2", rc));
            }
            Self {
                shutdown: symbol(&lib, "nvmlShutdown")?,
                error_string,
                device_count: symbol(&lib, "nvmlDeviceGetCount_v2")?,
                handle_by_index: symbol(&lib, "nvmlDeviceGetHandleByIndex_v2")?,
                cc_state: symbol(&lib, "nvmlSystemGetConfComputeState")?,
                certificate: symbol(&lib, "nvmlDeviceGetConfComputeGpuCertificate")?,
                report: symbol(&lib, "nvmlDeviceGetConfComputeGpuAttestationReport")?,
                set_ready: symbol(&lib, "nvmlSystemSetConfComputeGpusReadyState")?,
                get_ready: symbol(&lib, "nvmlSystemGetConfComputeGpusReadyState")?,
                _lib: lib,
            }
        };
        Ok(nvml)
    }

    fn check(&self, call: &'static str, rc: u32) -> Result<(), GpuError> {
        if rc == 0 {
            Ok(())
        } else {
            Err(nvml_error(self.error_string, call, rc))
        }
    }

    /// The system's confidential-computing state.
    #[allow(unsafe_code)]
    pub fn cc_state(&self) -> Result<CcState, GpuError> {
        let mut state = CcState::default();
        // SAFETY: `state` is a valid nvmlConfComputeSystemState_t for NVML to fill.
        let rc = unsafe { (self.cc_state)(&mut state) };
        self.check("nvmlSystemGetConfComputeState", rc)?;
        Ok(state)
    }

    /// How many GPUs NVML sees.
    #[allow(unsafe_code)]
    pub fn device_count(&self) -> Result<u32, GpuError> {
        let mut n: c_uint = 0;
        // SAFETY: a valid out-pointer.
        let rc = unsafe { (self.device_count)(&mut n) };
        self.check("nvmlDeviceGetCount_v2", rc)?;
        Ok(n)
    }

    #[allow(unsafe_code)]
    fn device(&self, index: u32) -> Result<Device, GpuError> {
        let mut d: Device = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; the handle is opaque and only passed back to NVML.
        let rc = unsafe { (self.handle_by_index)(index, &mut d) };
        self.check("nvmlDeviceGetHandleByIndex_v2", rc)?;
        Ok(d)
    }

    /// GPU `index`'s attestation certificate chain and a report over `nonce`.
    #[allow(unsafe_code)]
    pub fn evidence(&self, index: u32, nonce: &[u8; 32]) -> Result<Evidence, GpuError> {
        let device = self.device(index)?;
        let mut cert = Box::new(GpuCertificate {
            cert_chain_size: 0,
            attestation_cert_chain_size: 0,
            cert_chain: [0; 0x1000],
            attestation_cert_chain: [0; 0x1400],
        });
        // SAFETY: `cert` is a valid, zeroed nvmlConfComputeGpuCertificate_t.
        let rc = unsafe { (self.certificate)(device, &mut *cert) };
        self.check("nvmlDeviceGetConfComputeGpuCertificate", rc)?;
        let chain_len = cert.attestation_cert_chain_size as usize;
        let cert_chain = cert
            .attestation_cert_chain
            .get(..chain_len)
            .ok_or_else(|| GpuError::Refused(format!("NVML says the chain is {chain_len} bytes")))?
            .to_vec();
        let mut report = Box::new(GpuAttestationReport {
            is_cec_attestation_report_present: 0,
            attestation_report_size: 0,
            cec_attestation_report_size: 0,
            nonce: *nonce,
            attestation_report: [0; 0x2000],
            cec_attestation_report: [0; 0x1000],
        });
        // SAFETY: `report` is a valid nvmlConfComputeGpuAttestationReport_t with the nonce set.
        let rc = unsafe { (self.report)(device, &mut *report) };
        self.check("nvmlDeviceGetConfComputeGpuAttestationReport", rc)?;
        let report_len = report.attestation_report_size as usize;
        let report_bytes = report
            .attestation_report
            .get(..report_len)
            .ok_or_else(|| {
                GpuError::Refused(format!("NVML says the report is {report_len} bytes"))
            })?
            .to_vec();
        Ok(Evidence {
            arch: String::new(),
            report: report_bytes,
            cert_chain,
        })
    }

    /// Whether the GPUs accept work.
    #[allow(unsafe_code)]
    pub fn ready_state(&self) -> Result<bool, GpuError> {
        let mut v: c_uint = 0;
        // SAFETY: a valid out-pointer.
        let rc = unsafe { (self.get_ready)(&mut v) };
        self.check("nvmlSystemGetConfComputeGpusReadyState", rc)?;
        Ok(v == 1)
    }

    #[allow(unsafe_code)]
    fn set_ready_state(&self, ready: bool) -> Result<(), GpuError> {
        // SAFETY: a plain value argument.
        let rc = unsafe { (self.set_ready)(u32::from(ready)) };
        self.check("nvmlSystemSetConfComputeGpusReadyState", rc)
    }
}

impl Drop for Nvml {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: NVML was initialized in `load`; the library is still loaded.
        let _ = unsafe { (self.shutdown)() };
    }
}

#[allow(unsafe_code)]
fn nvml_error(error_string: FnErrorString, call: &'static str, code: u32) -> GpuError {
    // SAFETY: nvmlErrorString returns a static NUL-terminated string (or null).
    let text = unsafe {
        let p = error_string(code);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    GpuError::Nvml { call, code, text }
}

/// What the verification of the GPUs is held to (besides the pinned NVIDIA roots).
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// The driver version the image ships (`measurements.json`).
    pub expected_driver: Option<&'a str>,
    /// RIMs and CRLs shipped with the image or fetched by the owner.
    pub rims: &'a [Vec<u8>],
    pub crls: &'a [Vec<u8>],
    pub now_unix_s: u64,
}

/// Collects fresh evidence from every GPU over `nonce` (for `/attestation?nonce=`, with
/// `gpu::gpu_nonce(client_nonce)`). Refuses when CC is not on, DevTools is on or the
/// environment is not production, or when there is no GPU.
pub fn collect(nvml: &Nvml, nonce: &[u8; 32]) -> Result<Vec<Evidence>, GpuError> {
    nvml.cc_state()?.check().map_err(GpuError::Refused)?;
    let count = nvml.device_count()?;
    if count == 0 {
        return Err(GpuError::Refused("NVML sees no GPU".to_owned()));
    }
    if count as usize > gpu::GPUS_MAX {
        return Err(GpuError::Refused(format!("NVML sees {count} GPUs")));
    }
    (0..count).map(|i| nvml.evidence(i, nonce)).collect()
}

/// At boot: collects evidence over `nonce`, verifies it, and sets the GPUs' ready state only
/// if every required check passed and none failed. Returns the outcome (to show), or why the
/// GPUs stay closed.
pub fn attest_and_open(
    nvml: &Nvml,
    nonce: &[u8; 32],
    policy: &Policy<'_>,
) -> Result<Outcome, GpuError> {
    let evidence = collect(nvml, nonce)?;
    let outcome = gpu::verify(&Inputs {
        evidence: &evidence,
        nonce: Some(nonce),
        rims: policy.rims,
        expected_driver: policy.expected_driver,
        crls: policy.crls,
        allow_stale_revocation: false,
        now_unix_s: policy.now_unix_s,
    });
    let mut problems = outcome.failures();
    for g in &outcome.gpus {
        for name in REQUIRED_CHECKS {
            if g.check(name).map(|c| c.status) == Some(Status::Unchecked) {
                problems.push(format!("gpu{}:{name} unchecked", g.index));
            }
        }
    }
    if let Some(e) = &outcome.error {
        problems.push(e.clone());
    }
    if !problems.is_empty() {
        return Err(GpuError::Refused(problems.join(", ")));
    }
    nvml.set_ready_state(true)?;
    Ok(outcome)
}
