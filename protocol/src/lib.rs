//! The end-to-end channel between the browser and the TD: attestation report data, HPKE-sealed requests and chunked sealed responses.
