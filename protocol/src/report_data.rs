//! The 64 bytes of TDX report data that bind a quote to this TD's channel keys and to the
//! verifier's fresh nonce.
//!
//! Layout (docs/protocol.md, "Report data"): SHA-512 over the domain tag, then each field
//! as a 4-byte big-endian length followed by its bytes, in the order HPKE public key, SHA-256
//! of the TLS certificate's SubjectPublicKeyInfo, nonce. Length prefixes make the encoding
//! injective; the tag keeps these bytes from meaning anything in another protocol.
//! This module must never accept a field it would have to truncate: lengths are u32.

use sha2_011::{Digest, Sha512};

/// The domain separation tag hashed first (ASCII, no terminator; its length is fixed).
pub const REPORT_DATA_DOMAIN_TAG: &[u8] = b"cloister/attestation/report-data/v1";

/// The report data for a quote: `SHA-512(tag || len32(hpke_pk) || hpke_pk || len32(spki_sha256)
/// || spki_sha256 || len32(nonce) || nonce)`, lengths as 4-byte big-endian.
///
/// Fields longer than `u32::MAX` bytes cannot occur (the nonce is at most 64 bytes, the key 32)
/// and are hashed with a saturated length, which no verifier would ever match.
pub fn report_data(hpke_public_key: &[u8], tls_spki_sha256: &[u8; 32], nonce: &[u8]) -> [u8; 64] {
    let mut hasher = Sha512::new();
    hasher.update(REPORT_DATA_DOMAIN_TAG);
    for field in [hpke_public_key, tls_spki_sha256.as_slice(), nonce] {
        let length = u32::try_from(field.len()).unwrap_or(u32::MAX);
        hasher.update(length.to_be_bytes());
        hasher.update(field);
    }
    let digest = hasher.finalize();
    let mut out = [0u8; 64];
    out.copy_from_slice(&digest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_field_changes_the_report_data() {
        let key = [1u8; 32];
        let spki = [2u8; 32];
        let nonce = [3u8; 16];
        let base = report_data(&key, &spki, &nonce);
        assert_ne!(base, report_data(&[9u8; 32], &spki, &nonce));
        assert_ne!(base, report_data(&key, &[9u8; 32], &nonce));
        assert_ne!(base, report_data(&key, &spki, &[9u8; 16]));
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_report_data() {
        // Without length prefixes these two would hash the same concatenation.
        let spki = [2u8; 32];
        let a = report_data(&[1u8; 32], &spki, &[5u8; 16]);
        let mut longer_key = vec![1u8; 32];
        longer_key.push(5);
        let b = report_data(&longer_key, &spki, &[5u8; 15]);
        assert_ne!(a, b);
    }

    #[test]
    fn matches_the_layout_written_out_by_hand() {
        let key = [0xabu8; 32];
        let spki = [0xcdu8; 32];
        let nonce = [0xefu8; 20];
        let mut preimage = Vec::new();
        preimage.extend_from_slice(b"cloister/attestation/report-data/v1");
        preimage.extend_from_slice(&[0, 0, 0, 32]);
        preimage.extend_from_slice(&key);
        preimage.extend_from_slice(&[0, 0, 0, 32]);
        preimage.extend_from_slice(&spki);
        preimage.extend_from_slice(&[0, 0, 0, 20]);
        preimage.extend_from_slice(&nonce);
        let expected: [u8; 64] = Sha512::digest(&preimage).into();
        assert_eq!(report_data(&key, &spki, &nonce), expected);
    }
}
