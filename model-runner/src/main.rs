//! `model-runner`: serves a GGUF model over the OpenAI HTTP API on TCP and/or a Unix socket.
//! Thin: parses arguments, loads the model, wires the library together. Never logs
//! prompts or completions.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use cloister_model_runner::engine::{Device, EngineConfig};
use cloister_model_runner::kv::KvStore;
use cloister_model_runner::model::Model;
use cloister_model_runner::server::{ApiLimits, AppState, router, serve_tcp, serve_unix};
use cloister_model_runner::service::{Runner, ServiceConfig};

#[derive(Debug, Parser)]
#[command(
    name = "model-runner",
    about = "Serve a GGUF model over the OpenAI HTTP API"
)]
struct Args {
    /// The GGUF model file, or the block device holding it (a dm-verity model disk).
    #[arg(long, env = "CLOISTER_MODEL")]
    model: PathBuf,
    /// The model's size in bytes; needed for a block device (whose size `fstat` does not
    /// give), optional for a file (then at most its size).
    #[arg(long)]
    model_bytes: Option<u64>,
    /// TCP address to listen on, e.g. 127.0.0.1:8080 (port 0 picks one).
    #[arg(long)]
    listen: Option<String>,
    /// Unix socket path to listen on.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Memory for the KV cache, in MiB, allocated at start.
    #[arg(long, default_value_t = 256)]
    kv_cache_mb: usize,
    /// Compute threads (default: all CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    block_tokens: usize,
    /// Most tokens in one forward pass; longer prompts are prefilled in chunks.
    #[arg(long, default_value_t = 256)]
    max_batch_tokens: usize,
    /// Most sequences decoding at once.
    #[arg(long, default_value_t = 64)]
    max_running: usize,
    /// Most requests waiting to start; past it, 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    max_queued_requests: usize,
    /// Most prompt tokens waiting to start; past it, 503 with Retry-After.
    #[arg(long, default_value_t = 262_144)]
    max_queued_tokens: usize,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Largest prompt text, in bytes.
    #[arg(long, default_value_t = 256 << 10)]
    max_prompt_bytes: usize,
    /// Where the model runs: cpu, cuda (GPU 0) or cuda:N. The GPU is never given up for
    /// the CPU silently: a GPU that cannot be used stops the start. Shown only in builds
    /// with the `cuda` feature; other builds refuse cuda with a clear message.
    #[arg(long, default_value = "cpu", hide = !cfg!(feature = "cuda"))]
    device: Device,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if args.listen.is_none() && args.socket.is_none() {
        bail!("give --listen ADDR, --socket PATH, or both");
    }
    if matches!(args.device, Device::Cuda(_)) && !cfg!(feature = "cuda") {
        bail!(
            "--device {}: this model-runner was built without CUDA support (cargo feature `cuda`); use --device cpu or a build with --features cuda",
            args.device
        );
    }
    if args.block_tokens == 0 || args.max_batch_tokens == 0 || args.max_running == 0 {
        bail!("--block-tokens, --max-batch-tokens and --max-running must be above 0");
    }
    let state = AppState {
        runner: Arc::new(OnceLock::new()),
        limits: ApiLimits {
            max_body_bytes: args.max_body_bytes,
            max_prompt_bytes: args.max_prompt_bytes,
            ..ApiLimits::default()
        },
    };
    let app = router(state.clone());
    // Listen first, so /health answers 503 while the model loads.
    let mut servers = tokio::task::JoinSet::new();
    if let Some(addr) = &args.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(tcp = %l.local_addr()?, "listening");
        servers.spawn(serve_tcp(l, app.clone()));
    }
    if let Some(path) = &args.socket {
        // A socket left by an earlier run would make bind fail.
        if std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            std::fs::remove_file(path).ok();
        }
        let l = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        tracing::info!(socket = %path.display(), "listening");
        servers.spawn(serve_unix(l, app.clone()));
    }

    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let path = args.model.clone();
    let started = std::time::Instant::now();
    let model_bytes = args.model_bytes;
    let loaded =
        tokio::task::spawn_blocking(move || Model::load_sized(&path, model_bytes, threads))
            .await?
            .with_context(|| format!("cannot load {}", args.model.display()))?;
    let shape = loaded.model.config.kv_shape();
    let kv_blocks = KvStore::blocks_for_budget(shape, args.block_tokens, args.kv_cache_mb << 20);
    if kv_blocks == 0 {
        bail!(
            "--kv-cache-mb {} holds not even one block",
            args.kv_cache_mb
        );
    }
    let config = ServiceConfig {
        engine: EngineConfig {
            block_tokens: args.block_tokens,
            kv_blocks,
            max_batch_tokens: args.max_batch_tokens,
            max_running: args.max_running,
        },
        max_queued_requests: args.max_queued_requests,
        max_queued_tokens: args.max_queued_tokens,
    };
    let device = args.device;
    let runner = tokio::task::spawn_blocking(move || {
        Runner::start_on(&loaded, config, device).map(|r| (r, loaded))
    })
    .await?
    .with_context(|| format!("cannot start the engine on {device}"))?;
    let (runner, loaded) = runner;
    tracing::info!(
        load_ms = started.elapsed().as_millis() as u64,
        kernel = ?loaded.model.kernel,
        %device,
        threads,
        kv_blocks,
        kv_tokens = kv_blocks * args.block_tokens,
        "model ready"
    );
    let _ = state.runner.set(runner);
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut watchdog_usec = 0;
    if sd_notify::watchdog_enabled(false, &mut watchdog_usec) && watchdog_usec > 0 {
        let runner = state.runner.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(watchdog_usec / 2));
            loop {
                tick.tick().await;
                // Ping only while the engine thread lives, so a dead engine gets restarted.
                if runner.get().is_some_and(|r| r.is_alive()) {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
            }
        });
    }
    if let Some(result) = servers.join_next().await {
        result??;
    }
    Ok(())
}
