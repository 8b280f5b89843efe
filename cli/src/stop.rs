//! `cloister stop`: asks a box started by `cloister run` to power off over the host channel
//! (vsock), waits for QEMU to exit, then stops the vsock backend. Logic in
//! `cloister_image::vsock`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cloister_image::vsock;

/// Power the box off cleanly: services stop in order, then QEMU exits.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of the image the box was started from (`cloister run --image`).
    #[arg(long, default_value = "target/cloister-image")]
    image: PathBuf,
    /// Seconds to wait for QEMU to exit after the request.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let stopped = vsock::stop(&args.image, Duration::from_secs(args.timeout))
        .context("the box did not power off")?;
    println!("the box powered off in {:.1} s", stopped.took.as_secs_f64());
    Ok(())
}
