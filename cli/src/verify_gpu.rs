//! `cloister verify-gpu`: check NVIDIA GPU confidential-computing evidence offline, in
//! NVIDIA's serialized shape `[{arch, nonce, evidence, certificate}]`, against the pinned
//! NVIDIA roots and the given RIMs. Prints one line per check and GPU; exits 1 when a check
//! fails, 2 when none fails but some could not be checked (unchecked is not a pass), 0 when
//! every check passed. All checking is in `cloister_measurements::gpu`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use cloister_measurements::gpu::{self, Inputs, Status};

/// Verify NVIDIA GPU attestation evidence offline.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The evidence list, JSON: `[{arch, nonce, evidence (base64), certificate (base64 PEM)}]`.
    evidence: PathBuf,
    /// The 32-byte GPU nonce the reports must answer, in hex. Without it freshness is
    /// unchecked (the evidence's own `nonce` field is the box's claim, not a check).
    #[arg(long)]
    nonce: Option<String>,
    /// A reference manifest (driver or VBIOS RIM, XML), repeatable.
    #[arg(long = "rim")]
    rims: Vec<PathBuf>,
    /// A CRL (DER) for the device chain, repeatable.
    #[arg(long = "crl")]
    crls: Vec<PathBuf>,
    /// The driver version the image pins (as in measurements.json).
    #[arg(long)]
    driver: Option<String>,
    /// The time to check validity at: RFC 3339 UTC (2024-06-01T00:00:00Z) or Unix seconds.
    /// Default: now.
    #[arg(long)]
    now: Option<String>,
    /// Accept CRLs past their next update.
    #[arg(long)]
    allow_stale_revocation: bool,
    /// Print the outcome as JSON instead of lines.
    #[arg(long)]
    json: bool,
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (evidence, _claimed_nonce) =
        gpu::parse_evidence_json(&read(&args.evidence)?).map_err(anyhow::Error::msg)?;
    let nonce = match &args.nonce {
        Some(text) => {
            let n = hex::decode(text.trim()).context("--nonce is not hex")?;
            if n.len() != 32 {
                bail!("--nonce is {} bytes; a GPU nonce is 32", n.len());
            }
            Some(n)
        }
        None => None,
    };
    let rims = args
        .rims
        .iter()
        .map(read)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let crls = args
        .crls
        .iter()
        .map(read)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let now = match &args.now {
        Some(text) => crate::verify_quote::parse_time(text)?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs(),
    };
    let outcome = gpu::verify(&Inputs {
        evidence: &evidence,
        nonce: nonce.as_deref(),
        rims: &rims,
        expected_driver: args.driver.as_deref(),
        crls: &crls,
        allow_stale_revocation: args.allow_stale_revocation,
        now_unix_s: now,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        for g in &outcome.gpus {
            println!(
                "GPU {} ({}; driver {}; VBIOS {})",
                g.index, g.arch, g.driver_version, g.vbios_version
            );
            for c in &g.checks {
                let value = if c.actual.is_empty() { "-" } else { &c.actual };
                let expected = if c.status == Status::Fail && !c.expected.is_empty() {
                    format!("expected {}; ", c.expected)
                } else {
                    String::new()
                };
                println!(
                    "  {:<9} {:<20} {value} ({expected}{})",
                    c.status.word(),
                    c.name,
                    c.detail
                );
            }
        }
    }
    if let Some(e) = &outcome.error {
        bail!("the evidence cannot be verified: {e}");
    }
    if outcome.failed {
        bail!(
            "GPU evidence REFUSED: {} failed",
            outcome.failures().join(", ")
        );
    }
    if !outcome.ok {
        let unchecked: usize = outcome
            .gpus
            .iter()
            .flat_map(|g| &g.checks)
            .filter(|c| c.status == Status::Unchecked)
            .count();
        eprintln!(
            "GPU evidence NOT FULLY VERIFIED: nothing failed, but {unchecked} checks could not \
             be made (see UNCHECKED lines)"
        );
        std::process::exit(2);
    }
    eprintln!(
        "GPU evidence verified: {} GPU(s), every check passed",
        outcome.gpus.len()
    );
    Ok(())
}
