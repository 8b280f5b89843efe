//! The attestation bundle: the JSON body of `GET /attestation?nonce=HEX`, which a verifier
//! (the browser's wasm verifier, `cloister verify`) checks before sealing anything.
//!
//! Binary fields are standard base64 (with padding), digests and the nonce lowercase hex.
//! This module only describes and parses the bundle; verifying it is the measurements
//! crate's job. It must never treat a bundle as verified.

use serde::{Deserialize, Serialize};

use crate::channel::PUBLIC_KEY_BYTES;
use crate::report_data::report_data;

/// The `version` of the bundle this crate writes and reads.
pub const BUNDLE_VERSION: u32 = 1;
/// The shortest nonce a client may ask for, in bytes.
pub const NONCE_MIN_BYTES: usize = 16;
/// The longest nonce a client may ask for, in bytes.
pub const NONCE_MAX_BYTES: usize = 64;
/// The header every API answer carries under the simulated TEE.
pub const SIMULATED_HEADER_NAME: &str = "x-cloister-tee";
/// Its value.
pub const SIMULATED_HEADER_VALUE: &str = "SIMULATED, not confidential";

/// Which TEE produced the quote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeName {
    /// Intel TDX: a quote that chains to Intel's root.
    Tdx,
    /// The development simulation: a quote signed by the development chain; not confidential.
    Simulated,
}

/// The JSON body of `GET /attestation?nonce=HEX`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    /// Always [`BUNDLE_VERSION`].
    pub version: u32,
    pub tee: TeeName,
    /// The TDX v4 quote whose report data is [`Bundle::expected_report_data`].
    #[serde(with = "base64_bytes")]
    pub quote: Vec<u8>,
    /// The CCEL event log.
    #[serde(with = "base64_bytes")]
    pub event_log: Vec<u8>,
    /// The collateral to verify the quote offline (the measurements crate's Collateral
    /// JSON), or null when the box has none.
    #[serde(default)]
    pub collateral: Option<serde_json::Value>,
    /// The channel's X25519 public key (32 bytes).
    #[serde(with = "base64_bytes")]
    pub hpke_public_key: Vec<u8>,
    /// The key id a sealed request must name.
    pub hpke_key_id: u8,
    /// SHA-256 of the DER SubjectPublicKeyInfo of the box's TLS certificate.
    #[serde(with = "hex_32")]
    pub tls_spki_sha256: [u8; 32],
    /// The nonce the client sent, echoed.
    #[serde(with = "hex_bytes")]
    pub nonce: Vec<u8>,
    /// The model the box serves.
    pub model: String,
}

/// Why a bundle, or a nonce, is malformed (before any cryptographic check).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("the bundle has version {0}; this client reads version {BUNDLE_VERSION}")]
    UnsupportedVersion(u32),
    #[error("the HPKE public key is {0} bytes, not {PUBLIC_KEY_BYTES}")]
    BadPublicKeyLength(usize),
    #[error("the nonce is {0} bytes; it must be {NONCE_MIN_BYTES} to {NONCE_MAX_BYTES}")]
    BadNonceLength(usize),
    #[error("the nonce is not hex")]
    NonceNotHex,
    #[error("the bundle is not valid JSON of the expected shape: {0}")]
    Json(String),
}

impl Bundle {
    /// Parses and checks the shape of a bundle (version, key length, nonce length).
    pub fn from_json(bytes: &[u8]) -> Result<Self, BundleError> {
        let bundle: Bundle =
            serde_json::from_slice(bytes).map_err(|e| BundleError::Json(e.to_string()))?;
        bundle.check_shape()?;
        Ok(bundle)
    }

    /// Checks version, key length and nonce length.
    pub fn check_shape(&self) -> Result<(), BundleError> {
        if self.version != BUNDLE_VERSION {
            return Err(BundleError::UnsupportedVersion(self.version));
        }
        if self.hpke_public_key.len() != PUBLIC_KEY_BYTES {
            return Err(BundleError::BadPublicKeyLength(self.hpke_public_key.len()));
        }
        check_nonce_length(&self.nonce)
    }

    /// The report data the quote must carry for this bundle's key, TLS key and nonce.
    pub fn expected_report_data(&self) -> [u8; 64] {
        report_data(&self.hpke_public_key, &self.tls_spki_sha256, &self.nonce)
    }
}

fn check_nonce_length(nonce: &[u8]) -> Result<(), BundleError> {
    if (NONCE_MIN_BYTES..=NONCE_MAX_BYTES).contains(&nonce.len()) {
        Ok(())
    } else {
        Err(BundleError::BadNonceLength(nonce.len()))
    }
}

/// Parses the `nonce` query parameter: hex, 16 to 64 bytes.
pub fn parse_nonce_hex(text: &str) -> Result<Vec<u8>, BundleError> {
    if text.len() > 2 * NONCE_MAX_BYTES {
        return Err(BundleError::BadNonceLength(text.len() / 2));
    }
    let nonce = hex::decode(text).map_err(|_| BundleError::NonceNotHex)?;
    check_nonce_length(&nonce)?;
    Ok(nonce)
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("not standard base64"))
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        hex::decode(text).map_err(|_| serde::de::Error::custom("not hex"))
    }
}

mod hex_32 {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        bytes: &[u8; 32],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        super::hex_bytes::serialize(bytes, serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<[u8; 32], D::Error> {
        let bytes = super::hex_bytes::deserialize(deserializer)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("not 32 bytes of hex"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        Bundle {
            version: 1,
            tee: TeeName::Simulated,
            quote: vec![1, 2, 3],
            event_log: vec![4, 5],
            collateral: None,
            hpke_public_key: vec![7; 32],
            hpke_key_id: 9,
            tls_spki_sha256: [8; 32],
            nonce: vec![0xaa; 16],
            model: "tiny".into(),
        }
    }

    #[test]
    fn json_uses_base64_and_hex_as_documented() {
        let value = serde_json::to_value(sample()).unwrap();
        assert_eq!(value["tee"], "simulated");
        assert_eq!(value["quote"], "AQID");
        assert_eq!(value["event_log"], "BAU=");
        assert_eq!(value["nonce"], "aa".repeat(16));
        assert_eq!(value["tls_spki_sha256"], "08".repeat(32));
        assert_eq!(value["collateral"], serde_json::Value::Null);
        let back = Bundle::from_json(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn malformed_bundles_are_refused_with_the_reason() {
        let mut bundle = sample();
        bundle.version = 2;
        assert_eq!(
            bundle.check_shape(),
            Err(BundleError::UnsupportedVersion(2))
        );
        let mut bundle = sample();
        bundle.hpke_public_key.pop();
        assert_eq!(
            bundle.check_shape(),
            Err(BundleError::BadPublicKeyLength(31))
        );
        let mut bundle = sample();
        bundle.nonce = vec![1; 15];
        assert_eq!(bundle.check_shape(), Err(BundleError::BadNonceLength(15)));
        let mut value = serde_json::to_value(sample()).unwrap();
        value["tls_spki_sha256"] = "abcd".into();
        assert!(matches!(
            Bundle::from_json(value.to_string().as_bytes()),
            Err(BundleError::Json(_))
        ));
    }

    #[test]
    fn nonce_parameter_is_hex_of_16_to_64_bytes() {
        assert_eq!(parse_nonce_hex(&"ab".repeat(16)).unwrap(), vec![0xab; 16]);
        assert_eq!(parse_nonce_hex(&"ab".repeat(64)).unwrap().len(), 64);
        assert_eq!(
            parse_nonce_hex(&"ab".repeat(15)),
            Err(BundleError::BadNonceLength(15))
        );
        assert_eq!(
            parse_nonce_hex(&"ab".repeat(65)),
            Err(BundleError::BadNonceLength(65))
        );
        assert_eq!(
            parse_nonce_hex(&"zz".repeat(16)),
            Err(BundleError::NonceNotHex)
        );
    }

    #[test]
    fn expected_report_data_binds_the_bundle_fields() {
        let bundle = sample();
        assert_eq!(
            bundle.expected_report_data(),
            report_data(&[7; 32], &[8; 32], &[0xaa; 16])
        );
    }
}
