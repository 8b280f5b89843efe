#!/usr/bin/env python3
"""Writes Cloister's SIMULATED TDX development key chain and collateral into dev-chain/.

NOT INTEL. NOT CONFIDENTIAL. These certificates let the simulated TEE (cargo feature
"simulated" of cloister-tee) produce quotes in the real TDX v4 format that verify, with
dcap-qvl, ONLY against the simulation root, which no verifier trusts unless told to.

Every private key is derived from a public label (dev_key below), so anyone can sign with
it: that is the point. Signatures are deterministic (RFC 6979), so running this script
again writes byte-identical files; the Rust tests check the committed files against the
keys the simulated TEE derives the same way.

Run from anywhere (needs python3-cryptography >= 44):
    python3 tee/src/simulated/make_dev_chain.py
Outputs: tee/src/simulated/dev-chain/* and measurements/src/cloister_simulated_root_ca.der.
"""

import datetime
import hashlib
import json
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "dev-chain"
ROOT_DER_FOR_VERIFIER = HERE.parents[2] / "measurements" / "src" / "cloister_simulated_root_ca.der"

# Validity of every certificate, CRL and collateral document: from 2025-01-01 to the end of
# 2099, so that tests do not rot. (Intel's own collateral lasts a month; this is a dev chain.)
NOT_BEFORE = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
NOT_AFTER = datetime.datetime(2099, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)
ISSUE_DATE = "2025-01-01T00:00:00Z"
NEXT_UPDATE = "2099-12-31T23:59:59Z"

# The simulated platform; the Rust side (simulated/mod.rs) puts the same values in its quotes.
FMSPC = bytes.fromhex("c10157000000")
PCE_ID = bytes.fromhex("0000")
PCE_SVN = 11
CPU_SVN = bytes([3, 3, 2, 2, 2, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0])
TEE_TCB_SVN = bytes([3, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
PPID = hashlib.sha256(b"Cloister SIMULATED TDX platform PPID").digest()[:16]
PLATFORM_INSTANCE_ID = hashlib.sha256(b"Cloister SIMULATED TDX platform instance").digest()[:16]
QE_MRSIGNER = hashlib.sha256(b"Cloister SIMULATED TDX quoting enclave signer").digest()
QE_ISVSVN = 4
TD_QE_PRODID = 2

ORG = "Cloister development (SIMULATED, NOT INTEL)"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def dev_key(label):
    """The P-256 key whose scalar is SHA-256("Cloister SIMULATED TDX dev key: " + label)."""
    scalar = int.from_bytes(hashlib.sha256(b"Cloister SIMULATED TDX dev key: " + label.encode()).digest(), "big")
    assert 0 < scalar < P256_ORDER, label
    return ec.derive_private_key(scalar, ec.SECP256R1())


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG)])


# --- minimal DER for Intel's SGX extension (OID 1.2.840.113741.1.13.1) ---
def tlv(tag, body):
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        b = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(b)]) + b
    return bytes([tag]) + length + body


def oid(dotted):
    parts = [int(p) for p in dotted.split(".")]
    out = bytes([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, out)


def integer(v):
    assert 0 <= v < 0x80
    return tlv(0x02, bytes([v]))


SGX = "1.2.840.113741.1.13.1"


def entry(suffix, value):
    return tlv(0x30, oid(SGX + suffix) + value)


def sgx_extension():
    tcb = b"".join(entry(".2.%d" % (i + 1), integer(CPU_SVN[i])) for i in range(16))
    tcb += entry(".2.17", integer(PCE_SVN)) + entry(".2.18", tlv(0x04, CPU_SVN))
    config = entry(".7.1", tlv(0x01, b"\x00")) + entry(".7.2", tlv(0x01, b"\x00")) + entry(".7.3", tlv(0x01, b"\x00"))
    return tlv(
        0x30,
        entry(".1", tlv(0x04, PPID))
        + entry(".2", tlv(0x30, tcb))
        + entry(".3", tlv(0x04, PCE_ID))
        + entry(".4", tlv(0x04, FMSPC))
        + entry(".5", tlv(0x0A, b"\x01"))
        + entry(".6", tlv(0x04, PLATFORM_INSTANCE_ID))
        + entry(".7", tlv(0x30, config)),
    )


def cert(serial, subject_cn, key, issuer_cert, issuer_key, ca, extra=()):
    issuer_name = issuer_cert.subject if issuer_cert is not None else name(subject_cn)
    issuer_pub = issuer_key.public_key()
    b = (
        x509.CertificateBuilder()
        .subject_name(name(subject_cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=(1 if issuer_cert is None else 0) if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub), critical=False)
    )
    for ext in extra:
        b = b.add_extension(ext, critical=False)
    return b.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True)


def crl(issuer_cert, issuer_key, number):
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(NOT_BEFORE)
        .next_update(NOT_AFTER)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True)
    )


def sign_json(key, value):
    body = json.dumps(value, separators=(",", ":")).encode()
    r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)))
    return body, (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()


def pem(*certs):
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def main():
    root_key, pck_ca_key, pck_key, tcb_key = (dev_key(n) for n in ("root", "pck-ca", "pck", "tcb-signing"))
    root = cert(1, "Cloister SIMULATED TDX root - NOT INTEL - not confidential", root_key, None, root_key, True)
    pck_ca = cert(2, "Cloister SIMULATED PCK Platform CA - NOT INTEL", pck_ca_key, root, root_key, True)
    tcb = cert(3, "Cloister SIMULATED TCB signing - NOT INTEL", tcb_key, root, root_key, False)
    pck = cert(
        4,
        "Cloister SIMULATED PCK certificate - NOT INTEL",
        pck_key,
        pck_ca,
        pck_ca_key,
        False,
        [x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX), sgx_extension())],
    )

    tcb_components = lambda svns: [{"svn": v} for v in svns]  # noqa: E731
    tcb_info = {
        "id": "TDX",
        "version": 3,
        "issueDate": ISSUE_DATE,
        "nextUpdate": NEXT_UPDATE,
        "fmspc": FMSPC.hex(),
        "pceId": PCE_ID.hex(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": 1,
        "tdxModule": {"mrsigner": "00" * 48, "attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF"},
        "tcbLevels": [
            {
                "tcb": {
                    "sgxtcbcomponents": tcb_components(CPU_SVN),
                    "pcesvn": PCE_SVN,
                    "tdxtcbcomponents": tcb_components(TEE_TCB_SVN),
                },
                "tcbDate": ISSUE_DATE,
                "tcbStatus": "UpToDate",
            }
        ],
    }
    qe_identity = {
        "id": "TD_QE",
        "version": 2,
        "issueDate": ISSUE_DATE,
        "nextUpdate": NEXT_UPDATE,
        "tcbEvaluationDataNumber": 1,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000",
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": QE_MRSIGNER.hex().upper(),
        "isvprodid": TD_QE_PRODID,
        "tcbLevels": [{"tcb": {"isvsvn": QE_ISVSVN}, "tcbDate": ISSUE_DATE, "tcbStatus": "UpToDate"}],
    }
    tcb_body, tcb_sig = sign_json(tcb_key, tcb_info)
    qe_body, qe_sig = sign_json(tcb_key, qe_identity)

    OUT.mkdir(exist_ok=True)
    files = {
        "root_ca.pem": pem(root),
        "pck_chain.pem": pem(pck, pck_ca, root),
        "pck_crl_issuer_chain.pem": pem(pck_ca, root),
        "tcb_info_issuer_chain.pem": pem(tcb, root),
        "pck_crl.der": crl(pck_ca, pck_ca_key, 1).public_bytes(serialization.Encoding.DER),
        "root_ca_crl.der": crl(root, root_key, 1).public_bytes(serialization.Encoding.DER),
        "tcb_info.json": b'{"tcbInfo":' + tcb_body + b',"signature":"' + tcb_sig.encode() + b'"}',
        "qe_identity.json": b'{"enclaveIdentity":' + qe_body + b',"signature":"' + qe_sig.encode() + b'"}',
    }
    for file_name, data in files.items():
        (OUT / file_name).write_bytes(data)
    ROOT_DER_FOR_VERIFIER.write_bytes(root.public_bytes(serialization.Encoding.DER))
    print("root SHA-256", hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest())


if __name__ == "__main__":
    main()
