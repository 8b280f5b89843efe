//! NVIDIA's reference integrity manifests (RIMs): ISO/IEC 19770-2 SWID tags carrying the
//! golden measurements of a driver or of one VBIOS, signed with an enveloped XML-DSig
//! signature (ECDSA P-384 over SHA-384, inclusive C14N 1.1) by a certificate that chains to
//! NVIDIA's RIM root.
//!
//! [`Rim::parse`] reads the manifest; [`Rim::verify`] checks its signature and signer chain.
//! The two are apart so that a caller can show what a RIM claims even when its signature
//! fails, and so that the signature is checked before (and independently of) validity times.

use std::collections::BTreeMap;

use roxmltree::Node;
use sha2::{Digest, Sha384};

use super::c14n;
use super::cert::{self, Cert};

/// Largest RIM accepted (NVIDIA's are about 20 KB).
pub const RIM_SIZE_MAX_BYTES: usize = 1024 * 1024;
/// Most XML nodes in one RIM.
const RIM_NODES_MAX: u32 = 20_000;
/// Most alternatives one measurement may list.
const ALTERNATIVES_MAX: usize = 16;

const NS_SWID: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
const NS_DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const NS_SHA384: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
const C14N11: &str = "http://www.w3.org/2006/12/xml-c14n11";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
const DIGEST_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";

/// One golden measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenMeasurement {
    /// Index as RIMs number them (from 0; the report's block index minus one).
    pub index: u32,
    pub name: String,
    pub active: bool,
    /// Accepted values (any one matches).
    pub alternatives: Vec<Vec<u8>>,
}

/// A parsed RIM.
#[derive(Debug, Clone)]
pub struct Rim {
    /// `SoftwareIdentity/@tagId`.
    pub tag_id: String,
    /// `Meta/@colloquialVersion`: the driver version, or the VBIOS version.
    pub version: String,
    /// `Meta/@product` (for example `GH100`).
    pub product: String,
    /// Measurements by index.
    pub measurements: BTreeMap<u32, GoldenMeasurement>,
    source: String,
}

/// What verifying a RIM's signature found.
#[derive(Debug, Clone)]
pub struct RimSignature {
    /// The signer's subject, and its validity.
    pub signer: String,
    pub signer_not_after: u64,
    /// The chain, signer first, ending with the pinned RIM root.
    pub chain: Vec<String>,
}

fn attr<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.attribute(name)
}

fn child<'a, 'i>(node: Node<'a, 'i>, ns: &str, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| {
        c.is_element() && c.tag_name().name() == name && c.tag_name().namespace() == Some(ns)
    })
}

fn parse_options<'i>() -> roxmltree::ParsingOptions<'i> {
    roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: RIM_NODES_MAX,
        ..Default::default()
    }
}

impl Rim {
    /// Reads a RIM's claims (not its signature: see [`Rim::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > RIM_SIZE_MAX_BYTES {
            return Err(format!(
                "the RIM is {} bytes, more than the {RIM_SIZE_MAX_BYTES} accepted",
                bytes.len()
            ));
        }
        let source = std::str::from_utf8(bytes)
            .map_err(|_| "the RIM is not UTF-8")?
            .to_owned();
        let doc = roxmltree::Document::parse_with_options(&source, parse_options())
            .map_err(|e| format!("the RIM is not well-formed XML: {e}"))?;
        let root = doc.root_element();
        if root.tag_name().name() != "SoftwareIdentity"
            || root.tag_name().namespace() != Some(NS_SWID)
        {
            return Err("the RIM is not a SWID tag (no SoftwareIdentity root)".to_owned());
        }
        let meta = child(root, NS_SWID, "Meta").ok_or("the RIM has no Meta element")?;
        let payload = child(root, NS_SWID, "Payload").ok_or("the RIM has no Payload element")?;
        let mut measurements = BTreeMap::new();
        for resource in payload
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == "Resource")
        {
            if attr(resource, "type") != Some("Measurement") {
                continue;
            }
            let index: u32 = attr(resource, "index")
                .and_then(|i| i.parse().ok())
                .ok_or("a RIM measurement has no numeric index")?;
            let active = match attr(resource, "active") {
                Some(a) if a.eq_ignore_ascii_case("true") => true,
                Some(a) if a.eq_ignore_ascii_case("false") => false,
                _ => return Err(format!("RIM measurement {index} has no active flag")),
            };
            let count: usize = attr(resource, "alternatives")
                .and_then(|i| i.parse().ok())
                .ok_or_else(|| format!("RIM measurement {index} has no alternatives count"))?;
            if count == 0 || count > ALTERNATIVES_MAX {
                return Err(format!(
                    "RIM measurement {index} lists {count} alternatives (1 to {ALTERNATIVES_MAX} accepted)"
                ));
            }
            let mut alternatives = Vec::with_capacity(count);
            for i in 0..count {
                let value = resource
                    .attribute((NS_SHA384, format!("Hash{i}").as_str()))
                    .ok_or_else(|| format!("RIM measurement {index} lacks Hash{i}"))?;
                let value = hex::decode(value)
                    .map_err(|_| format!("RIM measurement {index} Hash{i} is not hex"))?;
                if value.len() != 48 {
                    return Err(format!("RIM measurement {index} Hash{i} is not 48 bytes"));
                }
                alternatives.push(value);
            }
            let m = GoldenMeasurement {
                index,
                name: attr(resource, "name").unwrap_or("").to_owned(),
                active,
                alternatives,
            };
            if measurements.insert(index, m).is_some() {
                return Err(format!("RIM measurement {index} appears twice"));
            }
        }
        Ok(Self {
            tag_id: attr(root, "tagId").unwrap_or("").to_owned(),
            version: attr(meta, "colloquialVersion").unwrap_or("").to_owned(),
            product: attr(meta, "product").unwrap_or("").to_owned(),
            measurements,
            source,
        })
    }

    /// Checks the enveloped XML-DSig signature, then the signer's chain to `rim_root` at
    /// `now` (signature first, so that an expired but intact RIM says so).
    pub fn verify(&self, rim_root: &Cert, now: u64) -> Result<RimSignature, String> {
        let doc = roxmltree::Document::parse_with_options(&self.source, parse_options())
            .map_err(|e| format!("the RIM is not well-formed XML: {e}"))?;
        let root = doc.root_element();
        let sig = child(root, NS_DSIG, "Signature").ok_or("the RIM is not signed")?;
        if root
            .descendants()
            .filter(|n| n.is_element() && n.tag_name().name() == "Signature")
            .count()
            != 1
        {
            return Err("the RIM holds more than one Signature".to_owned());
        }
        let signed_info = child(sig, NS_DSIG, "SignedInfo").ok_or("no SignedInfo")?;
        fn algorithm<'a>(parent: Node<'a, '_>, name: &str) -> Option<&'a str> {
            child(parent, NS_DSIG, name).and_then(|n| n.attribute("Algorithm"))
        }
        if algorithm(signed_info, "CanonicalizationMethod") != Some(C14N11) {
            return Err("the signature does not use inclusive C14N 1.1".to_owned());
        }
        if algorithm(signed_info, "SignatureMethod") != Some(ECDSA_SHA384) {
            return Err("the signature is not ECDSA with SHA-384".to_owned());
        }
        let references: Vec<_> = signed_info
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == "Reference")
            .collect();
        let [reference] = references.as_slice() else {
            return Err("the signature must hold exactly one Reference".to_owned());
        };
        if reference.attribute("URI") != Some("") {
            return Err("the signature does not cover the whole document (URI=\"\")".to_owned());
        }
        let transforms: Vec<_> = child(*reference, NS_DSIG, "Transforms")
            .map(|t| {
                t.children()
                    .filter(|c| c.is_element())
                    .map(|c| c.attribute("Algorithm").unwrap_or(""))
                    .collect()
            })
            .unwrap_or_default();
        if transforms != [ENVELOPED, C14N11] {
            return Err(format!(
                "unexpected transforms {transforms:?} (enveloped signature, then C14N 1.1 expected)"
            ));
        }
        if algorithm(*reference, "DigestMethod") != Some(DIGEST_SHA384) {
            return Err("the reference digest is not SHA-384".to_owned());
        }
        let digest_b64 = child(*reference, NS_DSIG, "DigestValue")
            .and_then(|n| n.text())
            .ok_or("no DigestValue")?;
        let expected_digest = cert::base64_decode(&strip_ws(digest_b64))?;
        let canonical = c14n::document_without(&doc, &self.source, Some(sig))?;
        let digest = Sha384::digest(&canonical);
        if digest.as_slice() != expected_digest.as_slice() {
            return Err(format!(
                "the manifest's digest {} is not the signed one {}: the RIM was altered",
                hex::encode(digest),
                hex::encode(&expected_digest)
            ));
        }
        let signature_b64 = child(sig, NS_DSIG, "SignatureValue")
            .and_then(|n| n.text())
            .ok_or("no SignatureValue")?;
        let signature = cert::base64_decode(&strip_ws(signature_b64))?;
        let certs: Vec<Cert> = child(sig, NS_DSIG, "KeyInfo")
            .and_then(|k| child(k, NS_DSIG, "X509Data"))
            .map(|d| {
                d.children()
                    .filter(|c| c.is_element() && c.tag_name().name() == "X509Certificate")
                    .map(|c| {
                        cert::base64_decode(&strip_ws(c.text().unwrap_or("")))
                            .and_then(|der| Cert::from_der(&der))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        if certs.len() > cert::CHAIN_LENGTH_MAX {
            return Err("the RIM carries too many certificates".to_owned());
        }
        let signer = certs
            .first()
            .ok_or("the RIM carries no signing certificate")?;
        let signed_info_c14n = c14n::subtree(signed_info, &self.source)?;
        cert::verify_raw_p384_sha384(&signer.p384_key()?, &signed_info_c14n, &signature)
            .map_err(|e| format!("SignatureValue: {e}"))?;
        // The signature holds; now the signer's chain and validity.
        let chain = cert::verify_chain(&certs, rim_root, now)
            .map_err(|e| format!("the RIM's signer chain: {e}"))?;
        Ok(RimSignature {
            signer: signer.subject.clone(),
            signer_not_after: signer.not_after,
            chain: chain.subjects,
        })
    }
}

fn strip_ws(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_whitespace()).collect()
}
