//! `web-ui`: the box's HTTPS front. Parses the command line, starts the server from the
//! library, prints what the owner needs on the console, and tells the supervisor it is ready.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use cloister_web_ui::config::{AcmeSettings, ChallengeKind, Settings};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TeeArgument {
    /// Intel TDX (production).
    Tdx,
    /// The simulated TEE: NOT confidential; only in builds with --features simulated-tee.
    Simulated,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Challenge {
    TlsAlpn01,
    Http01,
}

/// The HTTPS front of a Cloister box: passkey sign-in, the owner's console, automatic TLS.
#[derive(Debug, Parser)]
#[command(name = "web-ui", version)]
struct Arguments {
    /// The state folder (database with accounts, keys and certificates).
    #[arg(long, default_value = "/var/lib/cloister/web-ui")]
    state_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    listen: IpAddr,
    /// HTTPS port.
    #[arg(long, default_value_t = 443)]
    https_port: u16,
    /// Plain HTTP port (redirects and ACME HTTP-01 only); 0 picks a free port.
    #[arg(long, default_value_t = 80)]
    http_port: u16,
    /// Serve no plain HTTP at all.
    #[arg(long)]
    no_http: bool,
    /// The HTTPS port browsers use when it differs (port forwarding).
    #[arg(long)]
    public_https_port: Option<u16>,
    /// The box's domain. Without it the box serves a self-signed certificate.
    #[arg(long)]
    domain: Option<String>,
    /// ACME directory URL; with --domain, turns on automatic certificates.
    #[arg(long)]
    acme_directory: Option<String>,
    /// Which ACME challenge to answer.
    #[arg(long, value_enum, default_value = "tls-alpn01")]
    acme_challenge: Challenge,
    /// Extra root certificate (PEM) to trust for the ACME server (test CAs).
    #[arg(long)]
    acme_ca_root: Option<PathBuf>,
    /// External account binding key id.
    #[arg(long, requires = "acme_eab_hmac_file")]
    acme_eab_kid: Option<String>,
    /// File holding the external account binding MAC key, base64url.
    #[arg(long, requires = "acme_eab_kid")]
    acme_eab_hmac_file: Option<PathBuf>,
    /// Contact for the ACME account (mailto:...).
    #[arg(long)]
    acme_contact: Vec<String>,
    /// The CA's identity for the CAA record (e.g. letsencrypt.org).
    #[arg(long)]
    caa_issuer: Option<String>,
    /// Shortest wait after a failed renewal, in seconds.
    #[arg(long, default_value_t = 60)]
    acme_retry_min_s: u64,
    /// Longest wait after failed renewals, in seconds.
    #[arg(long, default_value_t = 6 * 3600)]
    acme_retry_max_s: u64,
    /// The supervisor's control socket.
    #[arg(long, default_value = "/run/cloister/supervisor.sock")]
    supervisor_socket: PathBuf,
    /// model-runner's metrics: http://127.0.0.1:PORT/metrics or unix:/PATH (its socket).
    /// Default: /metrics where --model-runner points.
    #[arg(long)]
    model_metrics_url: Option<String>,
    /// The image's published measurements.json, shown in the console.
    #[arg(long)]
    measurements_file: Option<PathBuf>,
    /// Which TEE proves the box: tdx, or simulated (development builds only).
    #[arg(long, value_enum, default_value = "tdx")]
    tee: TeeArgument,
    /// The measurements.json browsers check the box against, served at /measurements.json.
    #[arg(long)]
    expected_measurements: Option<PathBuf>,
    /// The verifier compiled to WebAssembly, served at /assets/verifier.wasm.
    #[arg(long)]
    verifier_wasm: Option<PathBuf>,
    /// model-runner: unix:/run/cloister/model-runner.sock or http://127.0.0.1:PORT.
    #[arg(long)]
    model_runner: Option<String>,
    /// Attestations (quotes) one client address may ask for per minute.
    #[arg(long, default_value_t = 30)]
    attestations_per_minute: u32,
    /// Connections one client address may hold at once (all addresses: 1024). Behind a
    /// proxy or NAT every client shares the proxy's address: raise it to the global cap.
    #[arg(long, default_value_t = 256)]
    max_connections_per_address: usize,
    /// Repeated events (refused sign-ins, closed connections) are logged once per this
    /// many seconds, with their count.
    #[arg(long, default_value_t = 60)]
    log_summary_interval_s: u64,
}

fn settings(arguments: Arguments) -> anyhow::Result<Settings> {
    let mut settings = Settings::new(arguments.state_dir);
    settings.listen_address = arguments.listen;
    settings.https_port = arguments.https_port;
    settings.http_port = (!arguments.no_http).then_some(arguments.http_port);
    settings.public_https_port = arguments.public_https_port;
    settings.domain = arguments.domain;
    settings.supervisor_socket = arguments.supervisor_socket;
    settings.model_metrics_url = arguments.model_metrics_url.or_else(|| {
        let model_runner = arguments.model_runner.as_deref()?;
        Some(cloister_web_ui::console::metrics_url_of_model_runner(
            model_runner,
        ))
    });
    settings.measurements_file = arguments
        .measurements_file
        .or_else(|| arguments.expected_measurements.clone());
    settings.chat.tee = match arguments.tee {
        TeeArgument::Tdx => cloister_web_ui::chat::TeeChoice::Tdx,
        TeeArgument::Simulated if !cloister_web_ui::chat::SIMULATION_BUILT => anyhow::bail!(
            "--tee simulated: this web-ui was built without the simulated TEE (production builds never have it); build with --features simulated-tee for development"
        ),
        TeeArgument::Simulated => cloister_web_ui::chat::TeeChoice::Simulated,
    };
    settings.chat.expected_measurements = arguments.expected_measurements;
    settings.chat.verifier_wasm = arguments.verifier_wasm;
    settings.chat.model_runner = arguments
        .model_runner
        .map(|text| text.parse())
        .transpose()
        .context("--model-runner")?;
    settings.chat.attestations_per_minute = arguments.attestations_per_minute;
    settings.limits.max_connections_per_address = arguments.max_connections_per_address.max(1);
    cloister_web_ui::security::set_summary_interval(Duration::from_secs(
        arguments.log_summary_interval_s.max(1),
    ));
    if let Some(directory) = arguments.acme_directory {
        let mut acme = AcmeSettings::new(directory);
        acme.challenge = match arguments.acme_challenge {
            Challenge::TlsAlpn01 => ChallengeKind::TlsAlpn01,
            Challenge::Http01 => ChallengeKind::Http01,
        };
        acme.ca_root_pem = arguments.acme_ca_root;
        acme.contact = arguments.acme_contact;
        acme.caa_issuer = arguments.caa_issuer;
        acme.retry_min = Duration::from_secs(arguments.acme_retry_min_s.max(1));
        acme.retry_max = Duration::from_secs(arguments.acme_retry_max_s.max(1));
        if let (Some(kid), Some(file)) = (arguments.acme_eab_kid, arguments.acme_eab_hmac_file) {
            use base64::Engine as _;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text.trim().trim_end_matches('='))
                .context("the external account MAC key is not base64url")?;
            acme.external_account = Some((kid, key));
        }
        if settings.domain.is_none() {
            anyhow::bail!("--acme-directory needs --domain");
        }
        settings.acme = Some(acme);
    }
    Ok(settings)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: under the supervisor, stderr goes to
        // the logs and the serial console, which must stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let settings = settings(Arguments::parse())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Watch the signals before telling anyone we are ready, so a stop that comes right
        // after READY=1 is a clean stop.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot watch SIGTERM")?;
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("cannot watch SIGINT")?;
        let server = cloister_web_ui::start(settings).await?;
        let facts = server.state.resolver.facts();
        if server.state.chat.is_simulated() {
            println!("web-ui: the TEE is SIMULATED: NOT confidential, for development only");
        }
        println!("web-ui: HTTPS on {}", server.https_address);
        if let Some(address) = server.http_address {
            println!("web-ui: plain HTTP on {address} (redirects and ACME only)");
        }
        println!(
            "web-ui: certificate ({}) SHA-256 fingerprint {}",
            if facts.self_signed {
                "self-signed"
            } else {
                "from a CA"
            },
            facts.fingerprint_sha256
        );
        println!(
            "web-ui: certificate SPKI SHA-256 {}",
            facts.spki_sha256_base64
        );
        if let Some(code) = &server.setup_code {
            println!("web-ui: owner setup code (one use): {code}");
            println!(
                "web-ui: open https://{}/setup to create the owner's passkey",
                server.state.public_authority
            );
        }
        // Not under systemd or the supervisor: nothing to notify, and that is fine.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        server.stop().await;
        Ok(())
    })
}
