//! The guest's trusted execution environment: TDX quotes and event logs, or a loudly
//! simulated stand-in for tests.
//!
//! [`Tee`] is what the rest of the guest uses: a quote over 64 bytes of report data, the
//! event log behind the RTMRs, and (when known) the collateral to verify the quote offline.
//! Two backends implement it: [`tdx::TdxTee`], always built, which talks to the TDX module
//! through the kernel; and `simulated::SimulatedTee`, only with the cargo feature
//! `simulated` (off by default), whose quotes are signed by a development key chain that
//! every verifier rejects unless told otherwise.
//!
//! This crate must never pretend: a simulated TEE always says so through [`TeeKind`], and
//! the TDX backend never falls back to simulation.

#![deny(unsafe_code)]

pub mod gpu;
#[cfg(feature = "simulated")]
pub mod simulated;
pub mod tdx;

/// Which backend produced a quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TeeKind {
    /// A real Intel TDX trust domain.
    Tdx,
    /// The development stand-in: NOT confidential, signed by the simulation root.
    Simulated,
}

impl TeeKind {
    /// The name used in the attestation bundle's `tee` field: `tdx` or `simulated`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tdx => "tdx",
            Self::Simulated => "simulated",
        }
    }

    /// Whether the memory of this TEE is protected from the host.
    pub fn is_confidential(self) -> bool {
        matches!(self, Self::Tdx)
    }
}

impl std::fmt::Display for TeeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the TEE could not produce a quote, an event log or collateral.
#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    /// The machine is not a TDX guest (or its kernel lacks the TDX guest driver).
    #[error("{0}")]
    NotAvailable(String),
    /// Reading or writing a kernel interface failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel or the quoting service answered something we cannot use.
    #[error("{0}")]
    Protocol(String),
    /// The input given to a backend (for the simulation: measurements.json) is not usable.
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// A trusted execution environment the guest can ask for evidence.
pub trait Tee: Send + Sync {
    /// Which backend this is. Callers must show [`TeeKind::Simulated`] to the user.
    fn kind(&self) -> TeeKind;
    /// A quote (TDX v4 format) whose report data is exactly `report_data`.
    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, TeeError>;
    /// The event log behind the RTMRs: the CCEL table's log area (TCG crypto-agile format).
    fn event_log(&self) -> Result<Vec<u8>, TeeError>;
    /// The collateral to verify quotes offline, as measurements' `Collateral` JSON, when this
    /// backend has it (the simulation always does; a TD only when the owner provided it).
    fn collateral(&self) -> Result<Option<Vec<u8>>, TeeError>;
}
