//! A fake NVIDIA management library for tests: the same C symbols the GPU collector loads
//! (tee/src/gpu.rs), serving files from the folder named by `FAKE_NVML_DIR`:
//! - `cc_state`: "environment ccFeature devToolsMode" (for example "2 1 0");
//! - `gpuN.report` (hex) and `gpuN.chain` (PEM): GPU N's evidence; their count is the
//!   device count;
//! - `fail_<symbol>`: that call returns the NVML error code in the file;
//! - written by the fake: `gpuN.nonce` (the nonce the caller asked for, hex) and `ready`.
//!
//! Built by the test with plain `rustc --crate-type cdylib` (std only), named
//! libnvidia-ml.so.1. Test-only code: panics are fine, none crosses the FFI boundary
//! (each export catches them).

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::{c_char, c_uint, c_void};
use std::path::PathBuf;

const NOT_SUPPORTED: u32 = 3;
const INVALID_ARGUMENT: u32 = 2;
const UNKNOWN: u32 = 999;

fn dir() -> PathBuf {
    PathBuf::from(std::env::var("FAKE_NVML_DIR").unwrap_or_default())
}

fn forced(call: &str) -> Option<u32> {
    std::fs::read_to_string(dir().join(format!("fail_{call}")))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn guard(call: &str, f: impl FnOnce() -> u32 + std::panic::UnwindSafe) -> u32 {
    if let Some(code) = forced(call) {
        return code;
    }
    std::panic::catch_unwind(f).unwrap_or(UNKNOWN)
}

fn count() -> u32 {
    (0..64)
        .take_while(|i| dir().join(format!("gpu{i}.report")).exists())
        .count() as u32
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> u32 {
    guard("nvmlInit_v2", || 0)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> u32 {
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(code: u32) -> *const c_char {
    let s: &'static [u8] = match code {
        0 => b"Success\0",
        INVALID_ARGUMENT => b"Invalid Argument\0",
        NOT_SUPPORTED => b"Not Supported\0",
        _ => b"Unknown Error\0",
    };
    s.as_ptr().cast()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(n: *mut c_uint) -> u32 {
    let n = n as usize;
    guard("nvmlDeviceGetCount_v2", move || {
        unsafe { *(n as *mut c_uint) = count() };
        0
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(i: c_uint, d: *mut *mut c_void) -> u32 {
    let d = d as usize;
    guard("nvmlDeviceGetHandleByIndex_v2", move || {
        if i >= count() {
            return INVALID_ARGUMENT;
        }
        unsafe { *(d as *mut usize) = i as usize + 1 };
        0
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetConfComputeState(s: *mut [c_uint; 3]) -> u32 {
    let s = s as usize;
    guard("nvmlSystemGetConfComputeState", move || {
        let text = std::fs::read_to_string(dir().join("cc_state")).unwrap();
        let v: Vec<u32> = text
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        unsafe { *(s as *mut [c_uint; 3]) = [v[0], v[1], v[2]] };
        0
    })
}

#[repr(C)]
pub struct Cert {
    cert_chain_size: c_uint,
    attestation_cert_chain_size: c_uint,
    cert_chain: [u8; 0x1000],
    attestation_cert_chain: [u8; 0x1400],
}

#[repr(C)]
pub struct Report {
    is_cec: c_uint,
    report_size: c_uint,
    cec_size: c_uint,
    nonce: [u8; 32],
    report: [u8; 0x2000],
    cec: [u8; 0x1000],
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetConfComputeGpuCertificate(d: usize, c: *mut Cert) -> u32 {
    let c = c as usize;
    guard("nvmlDeviceGetConfComputeGpuCertificate", move || {
        let pem = std::fs::read(dir().join(format!("gpu{}.chain", d - 1))).unwrap();
        let c = unsafe { &mut *(c as *mut Cert) };
        c.attestation_cert_chain[..pem.len()].copy_from_slice(&pem);
        c.attestation_cert_chain_size = pem.len() as u32;
        0
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetConfComputeGpuAttestationReport(
    d: usize,
    r: *mut Report,
) -> u32 {
    let r = r as usize;
    guard("nvmlDeviceGetConfComputeGpuAttestationReport", move || {
        let r = unsafe { &mut *(r as *mut Report) };
        let i = d - 1;
        std::fs::write(dir().join(format!("gpu{i}.nonce")), hex(&r.nonce)).unwrap();
        let text = std::fs::read_to_string(dir().join(format!("gpu{i}.report"))).unwrap();
        let bytes = unhex(text.trim());
        r.report[..bytes.len()].copy_from_slice(&bytes);
        r.report_size = bytes.len() as u32;
        0
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlSystemSetConfComputeGpusReadyState(v: c_uint) -> u32 {
    guard("nvmlSystemSetConfComputeGpusReadyState", move || {
        std::fs::write(dir().join("ready"), v.to_string()).unwrap();
        0
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetConfComputeGpusReadyState(v: *mut c_uint) -> u32 {
    let v = v as usize;
    guard("nvmlSystemGetConfComputeGpusReadyState", move || {
        let s = std::fs::read_to_string(dir().join("ready")).unwrap_or_else(|_| "0".into());
        unsafe { *(v as *mut c_uint) = s.trim().parse().unwrap() };
        0
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
