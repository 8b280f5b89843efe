//! X.509 for GPU evidence: the device identity chain NVML returns (PEM, leaf first), the RIM
//! signer chains, the FWID extension, CRLs, and ECDSA P-384 signatures.
//!
//! Certificates are parsed with `x509-cert`; signatures are checked over the exact DER bytes
//! of the to-be-signed part as it appears in the input (never a re-encoding).

use der::{Decode, Encode};
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use p384::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest, Sha256, Sha384};
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;

/// Largest PEM chain accepted (a 5-certificate H100 chain is about 4.8 KB).
pub const CHAIN_PEM_SIZE_MAX_BYTES: usize = 64 * 1024;
/// Most certificates in one chain.
pub const CHAIN_LENGTH_MAX: usize = 8;
/// Largest single certificate or CRL (DER).
pub const DER_SIZE_MAX_BYTES: usize = 256 * 1024;

const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_SECP384R1: &str = "1.3.132.0.34";
const OID_BASIC_CONSTRAINTS: &str = "2.5.29.19";
/// TCG DICE: the Hopper FWID extension (`tcg-dice-Ueid`'s sibling, as NVIDIA uses it).
pub const OID_TCG_DICE_FWID_HOPPER: &str = "2.23.133.5.4.1";
/// TCG DICE: DiceTcbInfo (Blackwell puts the FWID in `fwids[0]`).
pub const OID_TCG_DICE_TCB_INFO: &str = "2.23.133.5.4.1.1";

/// One certificate: its DER and what was read from it.
#[derive(Debug, Clone)]
pub struct Cert {
    pub der: Vec<u8>,
    pub parsed: Certificate,
    /// The subject, in RFC 4514 form.
    pub subject: String,
    /// Validity, in seconds since the Unix epoch.
    pub not_before: u64,
    pub not_after: u64,
}

impl Cert {
    /// Parses one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        if der.len() > DER_SIZE_MAX_BYTES {
            return Err(format!("a certificate of {} bytes is too large", der.len()));
        }
        let parsed =
            Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
        let validity = parsed.tbs_certificate().validity();
        Ok(Self {
            subject: parsed.tbs_certificate().subject().to_string(),
            not_before: validity.not_before.to_unix_duration().as_secs(),
            not_after: validity.not_after.to_unix_duration().as_secs(),
            der: der.to_vec(),
            parsed,
        })
    }

    /// SHA-256 of the DER, in hex (how roots are pinned).
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }

    /// The subject public key, which must be a P-384 EC key.
    pub fn p384_key(&self) -> Result<VerifyingKey, String> {
        let spki = self.parsed.tbs_certificate().subject_public_key_info();
        if spki.algorithm.oid.to_string() != OID_EC_PUBLIC_KEY {
            return Err(format!("{}: the key is not an EC key", self.subject));
        }
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok());
        if curve.map(|c| c.to_string()).as_deref() != Some(OID_SECP384R1) {
            return Err(format!("{}: the key is not on P-384", self.subject));
        }
        let point = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| format!("{}: malformed public key", self.subject))?;
        VerifyingKey::from_sec1_bytes(point)
            .map_err(|_| format!("{}: invalid P-384 public key", self.subject))
    }

    /// Whether the certificate says it is a CA (basicConstraints cA = TRUE).
    pub fn is_ca(&self) -> bool {
        self.extension(OID_BASIC_CONSTRAINTS)
            .and_then(|v| x509_cert::ext::pkix::BasicConstraints::from_der(v).ok())
            .is_some_and(|bc| bc.ca)
    }

    /// The value (inner DER) of the extension with this OID.
    pub fn extension(&self, oid: &str) -> Option<&[u8]> {
        self.parsed
            .tbs_certificate()
            .extensions()?
            .iter()
            .find(|e| e.extn_id.to_string() == oid)
            .map(|e| e.extn_value.as_bytes())
    }

    /// The serial number's bytes.
    pub fn serial(&self) -> &[u8] {
        self.parsed.tbs_certificate().serial_number().as_bytes()
    }

    fn raw_subject(&self) -> Result<Vec<u8>, String> {
        self.parsed
            .tbs_certificate()
            .subject()
            .to_der()
            .map_err(|e| e.to_string())
    }

    fn raw_issuer(&self) -> Result<Vec<u8>, String> {
        self.parsed
            .tbs_certificate()
            .issuer()
            .to_der()
            .map_err(|e| e.to_string())
    }

    /// Checks that `issuer` signed this certificate (names match, issuer is a CA, and the
    /// ECDSA P-384 signature over the TBS bytes holds).
    pub fn verify_issued_by(&self, issuer: &Cert) -> Result<(), String> {
        if self.raw_issuer()? != issuer.raw_subject()? {
            return Err(format!(
                "{} names {} as issuer, not {}",
                self.subject,
                self.parsed.tbs_certificate().issuer(),
                issuer.subject
            ));
        }
        if !issuer.is_ca() {
            return Err(format!("{} is not a CA certificate", issuer.subject));
        }
        let tbs = tbs_bytes(&self.der)?;
        let alg = self.parsed.signature_algorithm().oid.to_string();
        let signature = self
            .parsed
            .signature()
            .as_bytes()
            .ok_or_else(|| format!("{}: malformed signature", self.subject))?;
        verify_der_signature(&issuer.p384_key()?, &alg, tbs, signature)
            .map_err(|e| format!("{}: {e}", self.subject))
    }
}

/// Verifies a DER ECDSA signature made with one of the algorithms NVIDIA uses.
pub fn verify_der_signature(
    key: &VerifyingKey,
    alg_oid: &str,
    message: &[u8],
    signature_der: &[u8],
) -> Result<(), String> {
    let digest: Vec<u8> = match alg_oid {
        OID_ECDSA_SHA384 => Sha384::digest(message).to_vec(),
        OID_ECDSA_SHA256 => Sha256::digest(message).to_vec(),
        other => return Err(format!("unsupported signature algorithm {other}")),
    };
    let signature = Signature::from_der(signature_der).map_err(|_| "malformed ECDSA signature")?;
    key.verify_prehash(&digest, &signature)
        .map_err(|_| "the signature does not verify".to_owned())
}

/// Verifies a raw r‖s ECDSA P-384 signature over SHA-384 of `message`.
pub fn verify_raw_p384_sha384(
    key: &VerifyingKey,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let signature =
        Signature::from_slice(signature).map_err(|_| "malformed ECDSA P-384 signature")?;
    key.verify_prehash(&Sha384::digest(message), &signature)
        .map_err(|_| "the signature does not verify".to_owned())
}

/// One DER TLV: (tag, header length, content length). Only definite lengths of up to four
/// bytes, as DER requires.
pub fn der_tlv(bytes: &[u8]) -> Result<(u8, usize, usize), String> {
    let tag = *bytes.first().ok_or("empty DER")?;
    let first = *bytes.get(1).ok_or("truncated DER length")?;
    let (header, len) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return Err("unsupported DER length".to_owned());
        }
        let len_bytes = bytes.get(2..2 + n).ok_or("truncated DER length")?;
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (2 + n, len)
    };
    if bytes.len() < header + len {
        return Err("truncated DER value".to_owned());
    }
    Ok((tag, header, len))
}

/// The raw bytes of a certificate's (or CRL's) to-be-signed part: the first element of the
/// outer SEQUENCE.
pub fn tbs_bytes(der: &[u8]) -> Result<&[u8], String> {
    let (tag, header, _) = der_tlv(der)?;
    if tag != 0x30 {
        return Err("not a DER SEQUENCE".to_owned());
    }
    let inner = &der[header..];
    let (tag, h, len) = der_tlv(inner)?;
    if tag != 0x30 {
        return Err("the to-be-signed part is not a SEQUENCE".to_owned());
    }
    Ok(&inner[..h + len])
}

/// Splits a PEM chain into certificates (leaf first, as NVML returns it).
pub fn parse_pem_chain(pem: &[u8]) -> Result<Vec<Cert>, String> {
    if pem.len() > CHAIN_PEM_SIZE_MAX_BYTES {
        return Err(format!(
            "the certificate chain is {} bytes, more than the {CHAIN_PEM_SIZE_MAX_BYTES} accepted",
            pem.len()
        ));
    }
    let text = std::str::from_utf8(pem).map_err(|_| "the certificate chain is not text")?;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut certs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let body_start = start + BEGIN.len();
        let end = rest[body_start..]
            .find(END)
            .ok_or("a PEM certificate has no END line")?
            + body_start;
        let b64: String = rest[body_start..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = base64_decode(&b64)?;
        if certs.len() == CHAIN_LENGTH_MAX {
            return Err(format!(
                "the chain has more than {CHAIN_LENGTH_MAX} certificates"
            ));
        }
        certs.push(Cert::from_der(&der)?);
        rest = &rest[end + END.len()..];
    }
    if certs.is_empty() {
        return Err("no PEM certificate found".to_owned());
    }
    Ok(certs)
}

pub(crate) fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("bad base64: {e}"))
}

/// What a verified chain looked like.
#[derive(Debug, Clone)]
pub struct ChainOutcome {
    /// Subjects, leaf first, ending with the pinned root.
    pub subjects: Vec<String>,
    /// Whether the chain's own last certificate was the pinned root (NVIDIA's verifier
    /// replaces it by the pinned one either way).
    pub presented_root_matches: bool,
}

/// Verifies `chain` (leaf first) up to the pinned `root` at `now`: each certificate signed by
/// the next, the last one that is not the root signed by the pinned root, every certificate
/// (root included) valid at `now`. A chain that ends with a self-signed certificate other than
/// the pinned root fails ("another root"). As NVIDIA's verifier does, a presented root is
/// replaced by the pinned one.
pub fn verify_chain(chain: &[Cert], root: &Cert, now: u64) -> Result<ChainOutcome, String> {
    let Some(last) = chain.last() else {
        return Err("the chain is empty".to_owned());
    };
    let presented_root_matches = last.der == root.der;
    let self_signed = last.raw_issuer().ok() == last.raw_subject().ok();
    let path: Vec<&Cert> = if presented_root_matches || (self_signed && chain.len() > 1) {
        if !presented_root_matches {
            return Err(format!(
                "the chain ends at {} (SHA-256 {}), not the pinned root {} (SHA-256 {})",
                last.subject,
                last.sha256_hex(),
                root.subject,
                root.sha256_hex()
            ));
        }
        chain[..chain.len() - 1].iter().chain([root]).collect()
    } else {
        chain.iter().chain([root]).collect()
    };
    if path.len() < 2 {
        return Err("the chain holds no certificate below the root".to_owned());
    }
    for cert in &path {
        if now < cert.not_before {
            return Err(format!(
                "{} is not valid yet (from {})",
                cert.subject,
                unix_to_rfc3339(cert.not_before)
            ));
        }
        if now > cert.not_after {
            return Err(format!(
                "{} expired at {}",
                cert.subject,
                unix_to_rfc3339(cert.not_after)
            ));
        }
    }
    for pair in path.windows(2) {
        pair[0].verify_issued_by(pair[1])?;
    }
    root.verify_issued_by(root)
        .map_err(|e| format!("the pinned root does not verify itself: {e}"))?;
    Ok(ChainOutcome {
        subjects: path.iter().map(|c| c.subject.clone()).collect(),
        presented_root_matches,
    })
}

/// The FWID a leaf certificate carries: the last 48 bytes of the Hopper TCG DICE extension
/// (2.23.133.5.4.1), or `fwids[0].digest` of a DiceTcbInfo (2.23.133.5.4.1.1, Blackwell).
pub fn leaf_fwid(leaf: &Cert) -> Result<Option<Vec<u8>>, String> {
    if let Some(v) = leaf.extension(OID_TCG_DICE_FWID_HOPPER) {
        if v.len() < 48 {
            return Err("the TCG DICE FWID extension is shorter than 48 bytes".to_owned());
        }
        return Ok(Some(v[v.len() - 48..].to_vec()));
    }
    if let Some(v) = leaf.extension(OID_TCG_DICE_TCB_INFO) {
        return dice_tcb_info_fwid(v).map(Some);
    }
    Ok(None)
}

/// DiceTcbInfo ::= SEQUENCE { vendor [0], model [1], version [2], svn [3], layer [4],
/// index [5], fwids [6] IMPLICIT SEQUENCE OF FWID, ... }; FWID ::= SEQUENCE { hashAlg OID,
/// digest OCTET STRING }.
fn dice_tcb_info_fwid(v: &[u8]) -> Result<Vec<u8>, String> {
    let (tag, header, len) = der_tlv(v)?;
    if tag != 0x30 {
        return Err("DiceTcbInfo is not a SEQUENCE".to_owned());
    }
    let mut rest = &v[header..header + len];
    while !rest.is_empty() {
        let (tag, h, l) = der_tlv(rest)?;
        if tag == 0xA6 {
            let fwids = &rest[h..h + l];
            let (t, fh, _) = der_tlv(fwids)?;
            if t != 0x30 {
                return Err("DiceTcbInfo fwids[0] is not a SEQUENCE".to_owned());
            }
            let fwid = &fwids[fh..];
            let (t, oh, ol) = der_tlv(fwid)?;
            if t != 0x06 {
                return Err("DiceTcbInfo fwids[0] has no hash algorithm".to_owned());
            }
            let digest = &fwid[oh + ol..];
            let (t, dh, dl) = der_tlv(digest)?;
            if t != 0x04 {
                return Err("DiceTcbInfo fwids[0] has no digest".to_owned());
            }
            return Ok(digest[dh..dh + dl].to_vec());
        }
        rest = &rest[h + l..];
    }
    Err("DiceTcbInfo has no fwids".to_owned())
}

/// A CRL, parsed, with its raw DER kept for the signature check.
#[derive(Debug, Clone)]
pub struct Crl {
    pub der: Vec<u8>,
    pub parsed: CertificateList,
    pub this_update: u64,
    pub next_update: Option<u64>,
}

impl Crl {
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        if der.len() > DER_SIZE_MAX_BYTES {
            return Err(format!("a CRL of {} bytes is too large", der.len()));
        }
        let parsed = CertificateList::from_der(der).map_err(|e| format!("unreadable CRL: {e}"))?;
        Ok(Self {
            this_update: parsed
                .tbs_cert_list
                .this_update
                .to_unix_duration()
                .as_secs(),
            next_update: parsed
                .tbs_cert_list
                .next_update
                .map(|t| t.to_unix_duration().as_secs()),
            der: der.to_vec(),
            parsed,
        })
    }

    /// Whether `issuer` signed this CRL.
    pub fn verify_issued_by(&self, issuer: &Cert) -> Result<(), String> {
        let name = self
            .parsed
            .tbs_cert_list
            .issuer
            .to_der()
            .map_err(|e| e.to_string())?;
        if name != issuer.raw_subject()? {
            return Err("another issuer".to_owned());
        }
        let tbs = tbs_bytes(&self.der)?;
        let signature = self
            .parsed
            .signature
            .as_bytes()
            .ok_or("malformed CRL signature")?;
        verify_der_signature(
            &issuer.p384_key()?,
            &self.parsed.signature_algorithm.oid.to_string(),
            tbs,
            signature,
        )
    }

    /// Whether the CRL lists this serial number.
    pub fn revokes(&self, serial: &[u8]) -> bool {
        self.parsed
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
            .any(|r| r.serial_number.as_bytes() == serial)
    }
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn unix_to_rfc3339(t: u64) -> String {
    let days = t / 86_400;
    let secs = t % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(unix_to_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(unix_to_rfc3339(1_719_792_000), "2024-07-01T00:00:00Z");
        assert_eq!(unix_to_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn der_lengths_are_bounded() {
        assert!(der_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_err());
        assert!(der_tlv(&[0x30, 0x82, 0xFF]).is_err());
        assert!(der_tlv(&[0x30, 0x03, 1]).is_err());
        assert_eq!(der_tlv(&[0x30, 0x01, 1]).unwrap(), (0x30, 2, 1));
    }
}
