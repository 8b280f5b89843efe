//! A software passkey authenticator, enough to register the box's owner from a test
//! without a browser: it answers `navigator.credentials.create()` options (WebAuthn
//! level 2) with a fresh ES256 key, "none" attestation, user present and verified, and
//! gives the credential JSON as `PublicKeyCredential.toJSON()` would. Registration needs
//! no signature, so the key's private half is only kept for completeness. Test code only.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::rand::SecureRandom as _;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use sha2::{Digest, Sha256};

/// Authenticator data flags: user present, user verified, attested credential data.
const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;
const FLAG_AT: u8 = 0x40;

/// Minimal CBOR (RFC 8949) encoding of what an attestation object holds.
#[derive(Debug, Clone)]
pub enum Cbor {
    /// An integer.
    Int(i64),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A text string.
    Text(String),
    /// A map, keys in the order given (already canonical for our uses).
    Map(Vec<(Cbor, Cbor)>),
}

fn head(out: &mut Vec<u8>, major: u8, value: u64) {
    let m = major << 5;
    match value {
        0..=23 => out.push(m | value as u8),
        24..=0xff => out.extend([m | 24, value as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((value as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(value.to_be_bytes());
        }
    }
}

impl Cbor {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Cbor::Int(v) if *v >= 0 => head(out, 0, *v as u64),
            Cbor::Int(v) => head(out, 1, (-1 - *v) as u64),
            Cbor::Bytes(b) => {
                head(out, 2, b.len() as u64);
                out.extend(b);
            }
            Cbor::Text(t) => {
                head(out, 3, t.len() as u64);
                out.extend(t.as_bytes());
            }
            Cbor::Map(entries) => {
                head(out, 5, entries.len() as u64);
                for (k, v) in entries {
                    k.write(out);
                    v.write(out);
                }
            }
        }
    }
}

/// One passkey made by [`register`].
#[derive(Debug)]
pub struct Passkey {
    /// The credential id.
    pub credential_id: Vec<u8>,
    /// The PKCS#8 private key.
    pub pkcs8: Vec<u8>,
}

/// Answers the registration `options` (`{"publicKey": {...}}` as the server sent them)
/// for `origin`; returns the credential JSON to send back and the passkey.
pub fn register(
    options: &serde_json::Value,
    origin: &str,
) -> Result<(serde_json::Value, Passkey), String> {
    let public_key = &options["publicKey"];
    let challenge = public_key["challenge"]
        .as_str()
        .ok_or("the options carry no challenge")?;
    let rp_id = public_key["rp"]["id"]
        .as_str()
        .ok_or("the options carry no rp.id")?;
    let offers_es256 = public_key["pubKeyCredParams"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["alg"] == -7));
    if !offers_es256 {
        return Err("the server does not accept ES256 keys".into());
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| "key generation failed")?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| "key parse failed")?;
    // Uncompressed point: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    let (x, y) = (point[1..33].to_vec(), point[33..65].to_vec());
    let mut credential_id = vec![0u8; 32];
    rng.fill(&mut credential_id)
        .map_err(|_| "randomness failed")?;

    let cose_key = Cbor::Map(vec![
        (Cbor::Int(1), Cbor::Int(2)),  // kty: EC2
        (Cbor::Int(3), Cbor::Int(-7)), // alg: ES256
        (Cbor::Int(-1), Cbor::Int(1)), // crv: P-256
        (Cbor::Int(-2), Cbor::Bytes(x)),
        (Cbor::Int(-3), Cbor::Bytes(y)),
    ]);
    let mut auth_data = Vec::new();
    auth_data.extend(Sha256::digest(rp_id.as_bytes()));
    auth_data.push(FLAG_UP | FLAG_UV | FLAG_AT);
    auth_data.extend(0u32.to_be_bytes()); // sign count
    auth_data.extend([0u8; 16]); // AAGUID: none
    auth_data.extend((credential_id.len() as u16).to_be_bytes());
    auth_data.extend(&credential_id);
    auth_data.extend(cose_key.encode());
    let attestation_object = Cbor::Map(vec![
        (Cbor::Text("fmt".into()), Cbor::Text("none".into())),
        (Cbor::Text("attStmt".into()), Cbor::Map(Vec::new())),
        (Cbor::Text("authData".into()), Cbor::Bytes(auth_data)),
    ])
    .encode();
    let client_data = serde_json::json!({
        "type": "webauthn.create",
        "challenge": challenge,
        "origin": origin,
        "crossOrigin": false,
    });
    let client_data_json = serde_json::to_vec(&client_data).map_err(|e| e.to_string())?;
    let id = B64URL.encode(&credential_id);
    let credential = serde_json::json!({
        "id": id,
        "rawId": id,
        "type": "public-key",
        "response": {
            "attestationObject": B64URL.encode(attestation_object),
            "clientDataJSON": B64URL.encode(client_data_json),
            "transports": ["internal"],
        },
        "extensions": {},
    });
    Ok((
        credential,
        Passkey {
            credential_id,
            pkcs8: pkcs8.as_ref().to_vec(),
        },
    ))
}

#[test]
fn cbor_encodes_as_rfc_8949_says() {
    // RFC 8949 appendix A examples.
    assert_eq!(Cbor::Int(0).encode(), [0x00]);
    assert_eq!(Cbor::Int(24).encode(), [0x18, 0x18]);
    assert_eq!(Cbor::Int(1000).encode(), [0x19, 0x03, 0xe8]);
    assert_eq!(Cbor::Int(-1).encode(), [0x20]);
    assert_eq!(Cbor::Int(-7).encode(), [0x26]);
    assert_eq!(Cbor::Int(-1000).encode(), [0x39, 0x03, 0xe7]);
    assert_eq!(
        Cbor::Text("IETF".into()).encode(),
        [0x64, 0x49, 0x45, 0x54, 0x46]
    );
    assert_eq!(Cbor::Bytes(vec![1, 2, 3, 4]).encode(), [0x44, 1, 2, 3, 4]);
    assert_eq!(
        Cbor::Map(vec![
            (Cbor::Int(1), Cbor::Int(2)),
            (Cbor::Int(3), Cbor::Int(4))
        ])
        .encode(),
        [0xa2, 0x01, 0x02, 0x03, 0x04]
    );
}
