//! Verification of a box's attestation bundle (the body of `GET /attestation?nonce=`):
//! the quote's signatures and chain, the TCB status, the debug bit, the event log, the
//! launch measurements, the report-data binding of the HPKE and TLS keys, and the nonce.
//! The result is a list of named checks, each with what was expected and what was found,
//! so that a person can see why a box was accepted or refused. The same code runs in
//! `cloister verify` and, compiled to wasm (`verifier-wasm`), in the browser.
//!
//! It must never read files, the network or the clock (the caller passes `now`), never
//! panic on the bytes a box sends, and never accept the simulation root unless the caller
//! says `accept_simulated`. The rules for each check are in docs/verification.md.

use cloister_protocol::attestation::{Bundle, TeeName};
use serde::Serialize;

use crate::eventlog::EventLog;
use crate::measurements::Measurements;
use crate::quote::{self, Collateral, Quote, QuoteError, TcbStatus, TrustRoot, VerifyOptions};
use crate::register::Digest48;

/// Largest attestation bundle (JSON) we read: a quote (~5 KB), an event log (CCEL areas are
/// 64 to 256 KiB, base64 adds a third) and collateral (CRLs and TCB info, ~50 KB).
pub const BUNDLE_SIZE_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Largest event log inside a bundle (decoded).
pub const BUNDLE_EVENT_LOG_SIZE_MAX_BYTES: usize = 2 * 1024 * 1024;
/// Shortest and longest nonce the protocol allows (bytes).
pub const NONCE_SIZE_MIN_BYTES: usize = 16;
pub const NONCE_SIZE_MAX_BYTES: usize = 64;

/// The TCB statuses that pass the `tcb_status` check. `SWHardeningNeeded` passes (its
/// advisories ask for software mitigations, which the measured kernel provides, and are
/// shown); every status that needs a platform change, a newer TDX module, or that cannot be
/// rated fails. See docs/verification.md.
pub const TCB_STATUSES_ACCEPTED: &[TcbStatus] =
    &[TcbStatus::UpToDate, TcbStatus::SWHardeningNeeded];

/// The names of the checks, in the order they are reported.
pub const CHECK_NAMES: [&str; 11] = [
    "quote_signature",
    "tcb_status",
    "debug_off",
    "event_log",
    "mrtd",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "report_data",
    "nonce",
];

/// What the verifier is given: everything comes from the caller, nothing is fetched.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The bundle exactly as the box served it (JSON).
    pub bundle_json: &'a [u8],
    /// The expected launch measurements (`measurements.json`); without them the register
    /// checks fail.
    pub expected: Option<&'a Measurements>,
    /// The nonce this client sent in `?nonce=`.
    pub nonce_sent: &'a [u8],
    /// SHA-256 of the TLS public key (DER SubjectPublicKeyInfo) the connection presented,
    /// when the caller can see it (`cloister verify` can, a browser cannot).
    pub observed_tls_spki_sha256: Option<&'a [u8; 32]>,
    /// Seconds since the Unix epoch, for certificate and collateral validity.
    pub now_unix_s: u64,
    /// Accept a quote that chains to the simulation root (development only).
    pub accept_simulated: bool,
}

/// One check: its name, whether it passed, and the values compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// A stable identifier (one of [`CHECK_NAMES`]).
    pub name: &'static str,
    /// What the check establishes, in words.
    pub title: &'static str,
    pub ok: bool,
    pub expected: String,
    pub actual: String,
    /// Why it passed or failed, and anything the reader should know.
    pub detail: String,
}

/// The outcome of verifying one bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Every check passed: the box may be sent a request, sealed to `hpke_public_key`.
    pub ok: bool,
    /// The quote chains to the simulation root: nothing about this box is confidential.
    pub simulated: bool,
    /// The root the quote's chain ended at, in words (empty when it verified under none).
    pub trust_root: String,
    /// What the box says it is (`tdx` or `simulated`); the trust root decides, not this.
    pub tee: String,
    /// The model the box says it serves.
    pub model: String,
    /// The HPKE public key the quote binds (hex): the one key a request may be sealed to.
    pub hpke_public_key: String,
    pub hpke_key_id: u8,
    /// The checks, in the order of [`CHECK_NAMES`].
    pub checks: Vec<Check>,
    /// Set when the bundle could not be read at all (then every check fails).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// The check of this name.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The names of the checks that failed, in order.
    pub fn failed(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect()
    }
}

fn title(name: &str) -> &'static str {
    match name {
        "quote_signature" => "Quote signature and certificate chain up to the pinned root",
        "tcb_status" => "Platform TCB status",
        "debug_off" => "The TD is not in debug mode",
        "event_log" => "The event log replays to the quote's RTMRs",
        "mrtd" => "MRTD (firmware) equals the expected value",
        "rtmr0" => "RTMR0 (firmware configuration) equals the expected value",
        "rtmr1" => "RTMR1 (kernel) equals the expected value",
        "rtmr2" => "RTMR2 (command line and initrd) equals the expected value",
        "rtmr3" => "RTMR3 (runtime events) equals the expected value",
        "report_data" => "The quote binds the HPKE key, the TLS key and the nonce",
        "nonce" => "The nonce is the one this client sent",
        _ => "unknown check",
    }
}

fn check(
    name: &'static str,
    ok: bool,
    expected: impl Into<String>,
    actual: impl Into<String>,
    detail: impl Into<String>,
) -> Check {
    Check {
        name,
        title: title(name),
        ok,
        expected: expected.into(),
        actual: actual.into(),
        detail: detail.into(),
    }
}

/// The bundle's fields, decoded. Shape: docs/protocol.md, section 3.
struct Decoded {
    tee: String,
    model: String,
    quote: Vec<u8>,
    event_log: Vec<u8>,
    collateral: Option<Collateral>,
    collateral_error: Option<String>,
    hpke_public_key: Vec<u8>,
    hpke_key_id: u8,
    tls_spki_sha256: [u8; 32],
    nonce: Vec<u8>,
}

fn decode(bundle_json: &[u8]) -> Result<Decoded, String> {
    if bundle_json.len() > BUNDLE_SIZE_MAX_BYTES {
        return Err(format!(
            "the attestation bundle is {} bytes, more than the {BUNDLE_SIZE_MAX_BYTES} accepted",
            bundle_json.len()
        ));
    }
    let bundle = Bundle::from_json(bundle_json)
        .map_err(|e| format!("the attestation bundle is not readable: {e}"))?;
    if bundle.event_log.len() > BUNDLE_EVENT_LOG_SIZE_MAX_BYTES {
        return Err(format!(
            "the event log is {} bytes, more than the {BUNDLE_EVENT_LOG_SIZE_MAX_BYTES} accepted",
            bundle.event_log.len()
        ));
    }
    let (collateral, collateral_error) = match &bundle.collateral {
        None | Some(serde_json::Value::Null) => (None, None),
        Some(value) => match Collateral::from_json(value.to_string().as_bytes()) {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(e.to_string())),
        },
    };
    let tee = match bundle.tee {
        TeeName::Tdx => "tdx",
        TeeName::Simulated => "simulated",
    };
    Ok(Decoded {
        tee: tee.to_owned(),
        model: bundle.model,
        quote: bundle.quote,
        event_log: bundle.event_log,
        collateral,
        collateral_error,
        hpke_public_key: bundle.hpke_public_key,
        hpke_key_id: bundle.hpke_key_id,
        tls_spki_sha256: bundle.tls_spki_sha256,
        nonce: bundle.nonce,
    })
}

/// Verifies a bundle; never fails as a function: what went wrong is in the checks.
pub fn verify(inputs: &Inputs<'_>) -> Report {
    match decode(inputs.bundle_json) {
        Ok(decoded) => verify_decoded(inputs, &decoded),
        Err(error) => unreadable(inputs, error),
    }
}

fn unreadable(inputs: &Inputs<'_>, error: String) -> Report {
    let checks = CHECK_NAMES
        .iter()
        .map(|&name| {
            let expected = match name {
                "nonce" => hex::encode(inputs.nonce_sent),
                _ => String::new(),
            };
            check(name, false, expected, "", error.clone())
        })
        .collect();
    Report {
        ok: false,
        simulated: false,
        trust_root: String::new(),
        tee: String::new(),
        model: String::new(),
        hpke_public_key: String::new(),
        hpke_key_id: 0,
        checks,
        error: Some(error),
    }
}

fn root_name(root: TrustRoot) -> &'static str {
    match root {
        TrustRoot::Intel => "Intel SGX Root CA",
        TrustRoot::Simulated => "Cloister SIMULATION root (development keys, NOT Intel)",
    }
}

fn expected_root(accept_simulated: bool) -> String {
    if accept_simulated {
        format!(
            "{} (or, as explicitly allowed, the {})",
            root_name(TrustRoot::Intel),
            root_name(TrustRoot::Simulated)
        )
    } else {
        root_name(TrustRoot::Intel).to_owned()
    }
}

/// The quote as checked: parsed, and verified under one of the roots (or not).
struct QuoteOutcome {
    parsed: Option<Quote>,
    verdict: Option<quote::Verdict>,
    check: Check,
}

fn check_quote(inputs: &Inputs<'_>, d: &Decoded) -> QuoteOutcome {
    let expected = expected_root(inputs.accept_simulated);
    let fail = |parsed: Option<Quote>, actual: &str, detail: String| QuoteOutcome {
        parsed,
        verdict: None,
        check: check("quote_signature", false, expected.clone(), actual, detail),
    };
    let parsed = match Quote::parse(&d.quote) {
        Ok(q) => q,
        Err(e) => return fail(None, "unreadable quote", e.to_string()),
    };
    let Some(collateral) = &d.collateral else {
        let detail = match &d.collateral_error {
            Some(e) => format!("the box's collateral is not usable: {e}"),
            None => "the box served no collateral, so the quote cannot be checked offline; \
                     its owner must provide Intel's collateral"
                .to_owned(),
        };
        return fail(Some(parsed), "no collateral", detail);
    };
    let options = VerifyOptions {
        accept_simulated: inputs.accept_simulated,
    };
    match quote::verify_with_options(&d.quote, collateral, inputs.now_unix_s, &options) {
        Ok(verdict) => {
            let detail = match verdict.warning {
                Some(warning) => {
                    format!("{warning}; accepted only because simulation was explicitly allowed")
                }
                None => format!(
                    "version {} quote; the attestation key, the QE report, the PCK chain, the \
                     CRLs, the TCB info and the QE identity all verify at Unix time {}",
                    verdict.quote_version, inputs.now_unix_s
                ),
            };
            let actual = root_name(verdict.trust_root);
            QuoteOutcome {
                parsed: Some(parsed),
                check: check("quote_signature", true, expected.clone(), actual, detail),
                verdict: Some(verdict),
            }
        }
        Err(e @ QuoteError::SimulatedRoot) => {
            fail(Some(parsed), root_name(TrustRoot::Simulated), e.to_string())
        }
        Err(e) => fail(Some(parsed), "does not verify", e.to_string()),
    }
}

/// Values read from a quote whose signature did not verify prove nothing; say so.
const UNPROVEN: &str = " (read from a quote whose signature did not verify: unproven)";

fn check_tcb(q: &QuoteOutcome) -> Check {
    let expected = TCB_STATUSES_ACCEPTED
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let Some(v) = &q.verdict else {
        return check(
            "tcb_status",
            false,
            expected,
            "unknown",
            "the TCB is rated only once the quote's signature and collateral verify",
        );
    };
    let ok = TCB_STATUSES_ACCEPTED.contains(&v.tcb_status);
    let advisories = if v.advisory_ids.is_empty() {
        "no advisories".to_owned()
    } else {
        format!("advisories: {}", v.advisory_ids.join(", "))
    };
    let why = match v.tcb_status {
        TcbStatus::UpToDate => "the platform is up to date",
        TcbStatus::SWHardeningNeeded => {
            "accepted: the advisories ask for software mitigations in the TD"
        }
        TcbStatus::ConfigurationNeeded | TcbStatus::ConfigurationAndSWHardeningNeeded => {
            "refused: the platform's configuration leaves it open to the advisories"
        }
        TcbStatus::OutOfDate | TcbStatus::OutOfDateConfigurationNeeded => {
            "refused: the platform's firmware or microcode is out of date"
        }
        TcbStatus::TDRelaunchAdvised | TcbStatus::TDRelaunchAdvisedConfigurationNeeded => {
            "refused: the TDX module was updated and this TD must be relaunched on it"
        }
        TcbStatus::NoMatchingTcbLevel => {
            "refused: no level of Intel's TCB info covers this platform, so it cannot be rated"
        }
    };
    check(
        "tcb_status",
        ok,
        expected,
        format!("{:?}", v.tcb_status),
        format!("{why}; {advisories}"),
    )
}

fn check_debug(q: &QuoteOutcome) -> Check {
    let Some(p) = &q.parsed else {
        return check(
            "debug_off",
            false,
            "off",
            "unknown",
            "the quote is unreadable",
        );
    };
    let debug = p.report.debug();
    let mut detail = format!("TD attributes {:#018x}", p.report.td_attributes);
    if debug {
        detail.push_str(": bit 0 (DEBUG) is set, the host can read the TD's memory");
    }
    if q.verdict.is_none() {
        detail.push_str(UNPROVEN);
    }
    check(
        "debug_off",
        !debug,
        "off",
        if debug { "on" } else { "off" },
        detail,
    )
}

fn rtmr_lines(rtmrs: &[Digest48; 4]) -> String {
    rtmrs
        .iter()
        .enumerate()
        .map(|(i, r)| format!("rtmr{i} {}", hex::encode(r)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn check_event_log(q: &QuoteOutcome, d: &Decoded) -> (Check, Option<EventLog>) {
    let Some(p) = &q.parsed else {
        return (
            check("event_log", false, "", "", "the quote is unreadable"),
            None,
        );
    };
    let expected = rtmr_lines(&p.report.rtmrs);
    let log = match EventLog::parse(&d.event_log) {
        Ok(log) => log,
        Err(e) => {
            return (
                check(
                    "event_log",
                    false,
                    expected,
                    "unreadable",
                    format!("the event log is not readable: {e}"),
                ),
                None,
            );
        }
    };
    let replayed = log.replay();
    let differ: Vec<String> = (0..4)
        .filter(|&i| replayed[i] != p.report.rtmrs[i])
        .map(|i| format!("RTMR{i}"))
        .collect();
    let mut detail = if differ.is_empty() {
        format!(
            "{} events replay to the quote's RTMR0..RTMR3",
            log.events.len()
        )
    } else {
        format!(
            "{} events replay to other values for {}: the log is not the one behind this quote",
            log.events.len(),
            differ.join(", ")
        )
    };
    if q.verdict.is_none() {
        detail.push_str(UNPROVEN);
    }
    (
        check(
            "event_log",
            differ.is_empty(),
            expected,
            rtmr_lines(&replayed),
            detail,
        ),
        Some(log),
    )
}

/// The first event of the log for RTMR `index` whose digest is not the expected event's.
fn first_differing_event(log: &EventLog, expected: &Measurements, index: usize) -> Option<String> {
    let wanted = match index {
        0 => &expected.events.rtmr0,
        1 => &expected.events.rtmr1,
        2 => &expected.events.rtmr2,
        _ => &expected.events.rtmr3,
    };
    if wanted.is_empty() {
        return None;
    }
    let actual: Vec<_> = log
        .events
        .iter()
        .filter(|e| e.rtmr() == Some(index))
        .collect();
    for (k, want) in wanted.iter().enumerate() {
        match actual.get(k) {
            None => {
                return Some(format!(
                    "the log has {} events for this register, {} are expected; the first missing is \"{}\"",
                    actual.len(),
                    wanted.len(),
                    want.what
                ));
            }
            Some(e) => {
                let got = e.sha384.map(hex::encode).unwrap_or_default();
                if got != want.digest.to_ascii_lowercase() {
                    return Some(format!(
                        "event {} of this register differs: expected \"{}\" {}, the log has \"{}\" {}",
                        k + 1,
                        want.what,
                        want.digest,
                        e.description,
                        got
                    ));
                }
            }
        }
    }
    (actual.len() > wanted.len()).then(|| {
        format!(
            "the log has {} events for this register, {} are expected",
            actual.len(),
            wanted.len()
        )
    })
}

fn check_registers(
    q: &QuoteOutcome,
    expected: Option<&Measurements>,
    log: Option<&EventLog>,
) -> Vec<Check> {
    const REGISTERS: [&str; 5] = ["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"];
    REGISTERS
        .iter()
        .enumerate()
        .map(|(i, &name)| {
            let actual = q.parsed.as_ref().map(|p| match i {
                0 => p.report.mrtd,
                _ => p.report.rtmrs[i - 1],
            });
            let actual_text = actual.map(hex::encode).unwrap_or_default();
            let Some(m) = expected else {
                return check(
                    name,
                    false,
                    "",
                    actual_text,
                    "no expected measurements (measurements.json) were given",
                );
            };
            let Some(want) = m.register(name) else {
                return check(
                    name,
                    false,
                    "",
                    actual_text,
                    format!("the expected measurements.json gives no value for {name}"),
                );
            };
            let Some(actual) = actual else {
                return check(
                    name,
                    false,
                    hex::encode(want),
                    "",
                    "the quote is unreadable",
                );
            };
            let ok = &actual == want;
            let mut detail = if ok {
                "equal".to_owned()
            } else {
                "differs: this box does not run the expected image".to_owned()
            };
            if !ok
                && i > 0
                && let Some(why) = log.and_then(|log| first_differing_event(log, m, i - 1))
            {
                detail.push_str("; ");
                detail.push_str(&why);
            }
            if q.verdict.is_none() {
                detail.push_str(UNPROVEN);
            }
            check(name, ok, hex::encode(want), actual_text, detail)
        })
        .collect()
}

fn check_report_data(inputs: &Inputs<'_>, q: &QuoteOutcome, d: &Decoded) -> Check {
    let (spki, spki_detail) = match inputs.observed_tls_spki_sha256 {
        Some(observed) if observed == &d.tls_spki_sha256 => (
            *observed,
            format!(
                "TLS key observed on this connection: SHA-256 {}",
                hex::encode(observed)
            ),
        ),
        Some(observed) => (
            *observed,
            format!(
                "TLS key observed on this connection: SHA-256 {}, but the box claims {}: \
                 the attestation was made for another TLS key (a relay or a swapped key)",
                hex::encode(observed),
                hex::encode(d.tls_spki_sha256)
            ),
        ),
        None => (
            d.tls_spki_sha256,
            format!(
                "TLS was not observed (a browser cannot see the certificate): the binding is \
                 checked with the TLS key SHA-256 the box claims, {}",
                hex::encode(d.tls_spki_sha256)
            ),
        ),
    };
    let want = cloister_protocol::report_data(&d.hpke_public_key, &spki, inputs.nonce_sent);
    let Some(p) = &q.parsed else {
        return check(
            "report_data",
            false,
            hex::encode(want),
            "",
            "the quote is unreadable",
        );
    };
    let ok = p.report.report_data == want;
    let mut detail = format!(
        "{} of HPKE key {} (id {}), {spki_detail}, and the nonce sent",
        if ok { "binds" } else { "does not bind" },
        hex::encode(&d.hpke_public_key),
        d.hpke_key_id
    );
    if q.verdict.is_none() {
        detail.push_str(UNPROVEN);
    }
    check(
        "report_data",
        ok,
        hex::encode(want),
        hex::encode(p.report.report_data),
        detail,
    )
}

fn check_nonce(inputs: &Inputs<'_>, d: &Decoded) -> Check {
    let sent = inputs.nonce_sent;
    let size_ok = (NONCE_SIZE_MIN_BYTES..=NONCE_SIZE_MAX_BYTES).contains(&sent.len());
    let ok = size_ok && d.nonce == sent;
    let detail = if !size_ok {
        format!(
            "the nonce sent is {} bytes; the protocol wants {NONCE_SIZE_MIN_BYTES} to {NONCE_SIZE_MAX_BYTES}",
            sent.len()
        )
    } else if ok {
        "the box answered this request, not an old one (the quote's report data covers the \
         nonce too)"
            .to_owned()
    } else {
        "the box answered with another nonce: a replayed or stale attestation".to_owned()
    };
    check(
        "nonce",
        ok,
        hex::encode(sent),
        hex::encode(&d.nonce),
        detail,
    )
}

fn verify_decoded(inputs: &Inputs<'_>, d: &Decoded) -> Report {
    let q = check_quote(inputs, d);
    let mut checks = vec![q.check.clone(), check_tcb(&q), check_debug(&q)];
    let (log_check, log) = check_event_log(&q, d);
    checks.push(log_check);
    checks.extend(check_registers(&q, inputs.expected, log.as_ref()));
    checks.push(check_report_data(inputs, &q, d));
    checks.push(check_nonce(inputs, d));
    Report {
        ok: checks.iter().all(|c| c.ok),
        simulated: q
            .verdict
            .as_ref()
            .is_some_and(|v| v.trust_root == TrustRoot::Simulated),
        trust_root: q
            .verdict
            .as_ref()
            .map(|v| root_name(v.trust_root).to_owned())
            .unwrap_or_default(),
        tee: d.tee.clone(),
        model: d.model.clone(),
        hpke_public_key: hex::encode(&d.hpke_public_key),
        hpke_key_id: d.hpke_key_id,
        checks,
        error: None,
    }
}
