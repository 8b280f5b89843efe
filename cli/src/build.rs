//! `cloister build`: builds the image reproducibly, or with `--check` rebuilds and
//! compares with a published manifest. All logic is in `cloister_image::build`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use cloister_image::build::{self, BuildOptions, TeeChoice};

/// Build the image: vmlinuz, initramfs.cpio.zst, cmdline, manifest.json and one
/// model-N.img disk per model.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder the outputs go to.
    #[arg(long, default_value = "target/cloister-image")]
    out: PathBuf,
    /// Build an image without a model (and without model-runner).
    #[arg(long, conflicts_with = "model")]
    no_model: bool,
    /// A GGUF model to serve from its own dm-verity model disk (repeatable; model-runner
    /// serves the first) [default: the pinned SmolLM2-135M-Instruct]. `--check` needs the
    /// same files again.
    #[arg(long, value_name = "FILE.gguf")]
    model: Vec<PathBuf>,
    /// The TEE the guest is built for: `tdx` (production) or `simulated` (development
    /// only: NOT confidential, its quotes are signed by a simulation key chain).
    #[arg(long, default_value = "tdx", value_name = "tdx|simulated")]
    tee: TeeChoice,
    /// Rebuild and compare with this manifest.json; lists every differing input and output.
    #[arg(long, value_name = "MANIFEST")]
    check: Option<PathBuf>,
    /// Download cache [default: $CLOISTER_CACHE or /var/cache/cloister].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Source tree [default: the checkout holding the current folder].
    #[arg(long)]
    source: Option<PathBuf>,
}

/// Printed before and after a simulated build.
pub const SIMULATED_WARNING: &str = "\
WARNING: --tee simulated builds a DEVELOPMENT image. It is NOT confidential: its TEE is
WARNING: simulated, its quotes are signed by a development key chain that anyone can use,
WARNING: and every page it serves says \"SIMULATED, not confidential\". Never put real
WARNING: conversations into it. A production image is `cloister build` (--tee tdx).";

pub fn run(args: Args) -> anyhow::Result<()> {
    let source = match args.source {
        Some(s) => s,
        None => {
            let here = std::env::current_dir()?;
            build::find_source_root(&here).context(
                "not inside a Cloister checkout (no image/lock.toml above); pass --source",
            )?
        }
    };
    let mut opts = BuildOptions::new(&source, &args.out);
    opts.no_model = args.no_model;
    opts.models = args.model;
    opts.tee = args.tee;
    if args.tee == TeeChoice::Simulated && args.check.is_none() {
        eprintln!("{}", SIMULATED_WARNING);
    }
    if let Some(cache) = args.cache {
        opts.cache = cache;
    }
    match args.check {
        None => {
            let built = build::build(&opts)?;
            for (name, sha) in &built.manifest.outputs {
                println!("{sha}  {}", built.out.join(name).display());
            }
            if built.manifest.tee == TeeChoice::Simulated {
                eprintln!("{SIMULATED_WARNING}");
            }
        }
        Some(manifest) => {
            let differences = build::check(&manifest, &opts)?;
            if !differences.is_empty() {
                for d in &differences {
                    println!("differs: {d}");
                }
                bail!(
                    "the rebuild differs from {} in {} places",
                    manifest.display(),
                    differences.len()
                );
            }
            println!(
                "reproduced: every input and output matches {}",
                manifest.display()
            );
        }
    }
    Ok(())
}
