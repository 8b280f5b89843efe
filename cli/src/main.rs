//! `cloister`, the one host command. Each subcommand is a module of a few lines over the
//! library that does the work (`cloister-image`, `cloister-measurements`, ...). It holds
//! no logic of its own beyond parsing arguments and printing results.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

mod bench;
mod build;
mod doctor;
mod eventlog;
mod measure;
mod run;
mod status;
mod stop;
mod verify;
mod verify_gpu;
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
    /// Build the image reproducibly (or --check a published manifest).
    Build(build::Args),
    /// Boot the built image in QEMU.
    Run(run::Args),
    /// Ask a box started by `run` whether it is ready, and its services' states (vsock).
    Status(status::Args),
    /// Power a box started by `run` off cleanly (vsock).
    Stop(stop::Args),
    /// Say whether this host can run the image: KVM, TDX, QEMU.
    Doctor(doctor::Args),
    /// Verify a TDX quote offline against collateral and expected measurements.
    VerifyQuote(verify_quote::Args),
    /// Check a running box from a fresh connection: attestation, measurements, TLS key.
    Verify(verify::Args),
    /// Verify NVIDIA GPU attestation evidence offline (NVIDIA's serialized JSON shape).
    VerifyGpu(verify_gpu::Args),
    /// Explain a TDX event log (CCEL) and replay it to RTMR values.
    Eventlog(eventlog::Args),
    /// Compute the launch measurements (MRTD, RTMR0..3) of an image: measurements.json.
    Measure(measure::Args),
    /// Benchmark the model runner against llama.cpp on the same model, in one run.
    Bench(bench::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Build(args) => build::run(args),
        Command::Run(args) => run::run(args),
        Command::Status(args) => status::run(args),
        Command::Stop(args) => stop::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::VerifyQuote(args) => verify_quote::run(args),
        Command::Verify(args) => verify::run(args),
        Command::VerifyGpu(args) => verify_gpu::run(args),
        Command::Eventlog(args) => eventlog::run(args),
        Command::Measure(args) => measure::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
