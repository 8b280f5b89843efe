//! `cloister-supervisor`: runs the services of a manifest folder (`run`), or talks to a running
//! supervisor over its control socket (`ctl`). A thin shell over the library: no logic here.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use cloister_supervisor::{ControlClient, Request, SupervisorConfig};

/// A service supervisor with systemd-compatible readiness, restarts and ordered shutdown.
#[derive(Debug, Parser)]
#[command(name = "cloister-supervisor", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the services and supervise them until SIGTERM, SIGINT or a poweroff request.
    Run(RunArgs),
    /// Send one request to a running supervisor and print the reply.
    Ctl(CtlArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Folder of `*.toml` service manifests.
    #[arg(long, default_value = "/etc/cloister/services")]
    manifests: PathBuf,
    /// The control socket to create.
    #[arg(long, default_value = "/run/cloister/supervisor.sock")]
    control_socket: PathBuf,
    /// Folder for the notify sockets.
    #[arg(long, default_value = "/run/cloister")]
    runtime_dir: PathBuf,
    /// Log the supervisor's own decisions in detail.
    #[arg(long)]
    verbose: bool,
}

#[derive(Debug, Args)]
struct CtlArgs {
    /// The supervisor's control socket.
    #[arg(long, default_value = "/run/cloister/supervisor.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    action: CtlAction,
}

#[derive(Debug, Subcommand)]
enum CtlAction {
    /// List services with state, pid, restarts, last exit, uptime and status.
    List,
    /// Start a service.
    Start { service: String },
    /// Stop a service.
    Stop { service: String },
    /// Restart a service.
    Restart { service: String },
    /// Print the last lines of a service's log.
    Logs {
        service: String,
        /// How many lines.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        /// Keep printing new lines as they come.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Stop every service in order and power off.
    Poweroff,
    /// Stop every service in order and reboot.
    Reboot,
    /// Print state changes as they happen (JSON lines) until interrupted.
    Events,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Ctl(args) => ctl(args),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let level = if args.verbose {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = SupervisorConfig {
        manifest_dir: args.manifests,
        control_socket: args.control_socket,
        runtime_dir: args.runtime_dir,
        pid1: std::process::id() == 1,
        host_channel: None,
    };
    let report = cloister_supervisor::run(config).context("supervisor failed")?;
    eprintln!("{report}");
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn ctl(args: CtlArgs) -> anyhow::Result<()> {
    let request = match args.action {
        CtlAction::List => Request::List,
        CtlAction::Start { service } => Request::Start { service },
        CtlAction::Stop { service } => Request::Stop { service },
        CtlAction::Restart { service } => Request::Restart { service },
        CtlAction::Logs {
            service,
            lines,
            follow,
        } => Request::Logs {
            service,
            lines: Some(lines),
            follow,
        },
        CtlAction::Poweroff => Request::Poweroff,
        CtlAction::Reboot => Request::Reboot,
        CtlAction::Events => Request::Events,
    };
    let mut client = ControlClient::connect(&args.socket)
        .with_context(|| format!("cannot reach the supervisor at {}", args.socket.display()))?;
    let response = client.request(&request)?;
    if !response.ok {
        bail!(
            "{}",
            response.error.unwrap_or_else(|| "request refused".into())
        );
    }
    if let Some(services) = &response.services {
        println!(
            "{:<24} {:<13} {:>8} {:>8} {:>10}  {:<28} STATUS",
            "SERVICE", "STATE", "PID", "RESTARTS", "UPTIME_S", "LAST EXIT"
        );
        for s in services {
            println!(
                "{:<24} {:<13} {:>8} {:>8} {:>10}  {:<28} {}",
                s.name,
                s.state,
                s.pid.map_or("-".into(), |p| p.to_string()),
                s.restarts,
                s.uptime_ms.map_or("-".into(), |u| (u / 1_000).to_string()),
                s.last_exit.as_deref().unwrap_or("-"),
                s.status.as_deref().unwrap_or("")
            );
        }
        for e in response.manifest_errors.iter().flatten() {
            println!("manifest error: {e}");
        }
    }
    if let Some(lines) = &response.lines {
        for l in lines {
            println!("{} {:?} {}", l.at_ms, l.stream, l.text);
        }
    }
    if matches!(request, Request::Logs { follow: true, .. }) {
        loop {
            let l = client.next_log_line()?;
            println!("{} {:?} {}", l.at_ms, l.stream, l.text);
        }
    }
    if matches!(request, Request::Events) {
        loop {
            let event = client.next_event()?;
            println!("{}", serde_json::to_string(&event)?);
        }
    }
    Ok(())
}
