//! The simulated TEE (cargo feature `simulated`): NOT confidential. Its quotes are signed by
//! a development key chain whose root every verifier rejects unless told to accept it.

use crate::{Tee, TeeError, TeeKind};

/// A stand-in TEE for laptops and tests; see the module documentation.
#[derive(Debug)]
pub struct SimulatedTee {
    _measurements_json: Vec<u8>,
}

impl SimulatedTee {
    /// A simulated TD whose MRTD and RTMRs are those of `measurements_json` (as written by
    /// `cloister measure`).
    pub fn new(measurements_json: &[u8]) -> Result<Self, TeeError> {
        Ok(Self {
            _measurements_json: measurements_json.to_vec(),
        })
    }
}

impl Tee for SimulatedTee {
    fn kind(&self) -> TeeKind {
        TeeKind::Simulated
    }
    fn quote(&self, _report_data: &[u8; 64]) -> Result<Vec<u8>, TeeError> {
        Err(TeeError::NotAvailable("not implemented yet".into()))
    }
    fn event_log(&self) -> Result<Vec<u8>, TeeError> {
        Err(TeeError::NotAvailable("not implemented yet".into()))
    }
    fn collateral(&self) -> Result<Option<Vec<u8>>, TeeError> {
        Ok(None)
    }
}
