//! TDX launch measurements (MRTD, RTMR0 to RTMR3) computed from build outputs, event-log
//! parsing and replay, and quote verification.
//!
//! The core does no I/O: every function takes bytes and returns values, so that the same
//! code can run in a browser as wasm. Reading files, the clock and the network is the
//! caller's job (the `cloister` command does it). Nothing here may panic on outside bytes:
//! every parser bounds its input and returns an error.

#![forbid(unsafe_code)]

pub mod attestation;
pub mod boot;
pub mod eventlog;
#[doc(hidden)]
pub mod fuzzing;
pub mod gpu;
mod le;
pub mod measurements;
pub mod pe;
pub mod quote;
pub mod register;
pub mod tdvf;

pub use measurements::{Event, Measurements};
pub use quote::{
    Collateral, CollateralFiles, Expectations, Mismatch, Quote, QuoteError, TcbStatus, TdReport,
    TrustRoot, Verdict, VerifyOptions, verify, verify_with_options,
};
pub use register::{Digest48, Register, sha384};

pub(crate) fn hex_ser<T: AsRef<[u8]>, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

pub(crate) fn hex_opt<T: AsRef<[u8]>, S: serde::Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&hex::encode(v)),
        None => s.serialize_none(),
    }
}

pub(crate) fn hex48_array4<S: serde::Serializer>(
    d: &[Digest48; 4],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(4))?;
    for x in d {
        seq.serialize_element(&hex::encode(x))?;
    }
    seq.end()
}
