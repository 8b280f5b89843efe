//! `cloister verify-quote`: check a TDX quote against Intel's collateral (offline, at a
//! given time) and against the expected measurements and report data. Exits non-zero with
//! every reason when anything differs. Reads files; all checking is in
//! `cloister-measurements`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cloister_measurements::{Collateral, CollateralFiles, Expectations, Measurements, TcbStatus};

/// Verify a TDX quote offline.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The quote, as raw bytes (what configfs-tsm's `outblob` holds).
    quote: PathBuf,
    /// Folder with the collateral: tcb_info.json, qe_identity.json, pck_crl.der,
    /// root_ca_crl.der, pck_crl_issuer_chain.pem, tcb_info_issuer_chain.pem,
    /// qe_identity_issuer_chain.pem (Intel PCS responses, as served); or one JSON file
    /// as `Collateral::to_json` writes it.
    #[arg(long)]
    collateral: PathBuf,
    /// `measurements.json` with the expected registers (those it names are checked).
    #[arg(long)]
    expected: Option<PathBuf>,
    /// The expected 64 bytes of report data, in hex (shorter values are zero-padded).
    #[arg(long)]
    report_data: Option<String>,
    /// The time to check validity at: RFC 3339 UTC (2023-07-01T01:00:00Z) or Unix seconds.
    /// Default: now.
    #[arg(long)]
    now: Option<String>,
    /// Also accept this TCB status (repeatable), e.g. SWHardeningNeeded.
    #[arg(long = "accept-tcb-status")]
    accept_tcb_status: Vec<String>,
    /// Accept a debug TD (its memory is readable by the host). Never for production.
    #[arg(long)]
    allow_debug: bool,
}

fn read(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(name);
    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_collateral_folder(dir: &Path) -> anyhow::Result<Collateral> {
    let (tcb, qe, pck_crl, root_crl, c1, c2, c3) = (
        read(dir, "tcb_info.json")?,
        read(dir, "qe_identity.json")?,
        read(dir, "pck_crl.der")?,
        read(dir, "root_ca_crl.der")?,
        read(dir, "pck_crl_issuer_chain.pem")?,
        read(dir, "tcb_info_issuer_chain.pem")?,
        read(dir, "qe_identity_issuer_chain.pem")?,
    );
    Ok(Collateral::from_files(CollateralFiles {
        tcb_info: &tcb,
        qe_identity: &qe,
        pck_crl: &pck_crl,
        root_ca_crl: &root_crl,
        pck_crl_issuer_chain: &c1,
        tcb_info_issuer_chain: &c2,
        qe_identity_issuer_chain: &c3,
    })?)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let quote = std::fs::read(&args.quote)
        .with_context(|| format!("cannot read {}", args.quote.display()))?;
    let collateral = if args.collateral.is_file() {
        let json = std::fs::read(&args.collateral)
            .with_context(|| format!("cannot read {}", args.collateral.display()))?;
        Collateral::from_json(&json)?
    } else {
        read_collateral_folder(&args.collateral)?
    };
    let now = match &args.now {
        Some(text) => parse_time(text)?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs(),
    };
    let mut expected = Expectations {
        allow_debug: args.allow_debug,
        ..Default::default()
    };
    if let Some(path) = &args.expected {
        let text =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        expected.measurements = Some(
            Measurements::from_json(&text)
                .with_context(|| format!("{} is not a measurements file", path.display()))?,
        );
    }
    if let Some(text) = &args.report_data {
        let bytes = hex::decode(text.trim()).context("--report-data is not hex")?;
        if bytes.len() > 64 {
            bail!("--report-data is {} bytes, at most 64", bytes.len());
        }
        let mut rd = [0u8; 64];
        rd[..bytes.len()].copy_from_slice(&bytes);
        expected.report_data = Some(rd);
    }
    for name in &args.accept_tcb_status {
        let status: TcbStatus = serde_json::from_value(serde_json::Value::String(name.clone()))
            .with_context(|| format!("unknown TCB status {name:?}"))?;
        expected.accepted_tcb_statuses.push(status);
    }

    let verdict = cloister_measurements::verify(&quote, &collateral, now)
        .context("the quote does not verify")?;
    println!("{}", serde_json::to_string_pretty(&verdict)?);
    let mismatches = verdict.check(&expected);
    if mismatches.is_empty() {
        eprintln!("quote verified: signed by Intel, and it shows what was expected");
        return Ok(());
    }
    for m in &mismatches {
        eprintln!("mismatch: {m}");
    }
    bail!(
        "the quote is signed by Intel but does not show what was expected ({} mismatches)",
        mismatches.len()
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` or plain Unix seconds.
pub(crate) fn parse_time(text: &str) -> anyhow::Result<u64> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    let b = text.as_bytes();
    let field = |range: std::ops::Range<usize>| -> anyhow::Result<i64> {
        let s = text.get(range).context("bad --now")?;
        s.parse::<i64>()
            .with_context(|| format!("bad --now {text:?}: use 2023-07-01T01:00:00Z"))
    };
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        bail!("bad --now {text:?}: use 2023-07-01T01:00:00Z or Unix seconds");
    }
    let (y, m, d) = (field(0..4)?, field(5..7)?, field(8..10)?);
    let (hh, mm, ss) = (field(11..13)?, field(14..16)?, field(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        bail!("bad --now {text:?}");
    }
    // Days from civil (proleptic Gregorian), after H. Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs).context("--now is before 1970")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_times_parse_to_unix_seconds() {
        assert_eq!(
            super::parse_time("2023-07-01T01:00:00Z").unwrap(),
            1_688_173_200
        );
        assert_eq!(super::parse_time("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            super::parse_time("2024-02-29T12:00:00Z").unwrap(),
            1_709_208_000
        );
        assert_eq!(super::parse_time("42").unwrap(), 42);
        assert!(super::parse_time("2023-13-01T00:00:00Z").is_err());
        assert!(super::parse_time("yesterday").is_err());
    }
}
