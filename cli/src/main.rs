//! `cloister`, the one host command. Each subcommand is a module of a few lines over the
//! library that does the work (`cloister-image`, `cloister-measurements`, ...). It holds
//! no logic of its own beyond parsing arguments and printing results.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

mod eventlog;
mod measure;
mod verify_quote;

/// Build, boot, measure and verify a Cloister box.
#[derive(Debug, Parser)]
#[command(name = "cloister", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify a TDX quote offline against collateral and expected measurements.
    VerifyQuote(verify_quote::Args),
    /// Explain a TDX event log (CCEL) and replay it to RTMR values.
    Eventlog(eventlog::Args),
    /// Compute the launch measurements (MRTD, RTMR0..3) of an image: measurements.json.
    Measure(measure::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::VerifyQuote(args) => verify_quote::run(args),
        Command::Eventlog(args) => eventlog::run(args),
        Command::Measure(args) => measure::run(args),
    }
}
