//! `cloister status`: asks a box started by `cloister run` over the host channel (vsock) for
//! its readiness and its services' states, or with `--measurements` what it knows of its
//! measurements. Logic in `cloister_image::vsock`.

use std::path::PathBuf;

use anyhow::Context;
use cloister_image::vsock::{self, HostRequest, RunState};

/// Show whether the box is ready and its services' states.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of the image the box was started from (`cloister run --image`).
    #[arg(long, default_value = "target/cloister-image")]
    image: PathBuf,
    /// Show what the box knows of its measurements instead (JSON).
    #[arg(long)]
    measurements: bool,
    /// Print the box's answer as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let state = RunState::read(&args.image)?;
    let request = if args.measurements {
        HostRequest::Measurements
    } else {
        HostRequest::Status
    };
    let answer = vsock::ask(&state.device, request).context("no status from the box")?;
    if args.json || args.measurements {
        let value = if args.measurements {
            serde_json::to_value(&answer.measurements)?
        } else {
            serde_json::to_value(&answer)?
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let ready = answer.ready == Some(true);
    println!("box: {}", if ready { "ready" } else { "not ready" });
    let services = answer.services.unwrap_or_default();
    let width = services.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &services {
        println!("  {:<width$}  {}", s.name, s.state);
    }
    Ok(())
}
