//! Helpers for the chat tests: the real model-runner on the real model (in the test process,
//! over real HTTP on loopback), the real `web-ui` binary under the simulated TEE with its logs
//! in a file, accounts and sessions written through the store as a finished sign-in would,
//! and a sealed chat client built on cloister-protocol.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};

use cloister_measurements::measurements::{Event, replay};
use cloister_measurements::{Measurements, sha384};
use cloister_model_runner::engine::EngineConfig;
use cloister_model_runner::kv::KvStore;
use cloister_model_runner::model::Model;
use cloister_model_runner::server::{ApiLimits, AppState, router, serve_tcp};
use cloister_model_runner::service::{Runner, ServiceConfig};
use cloister_web_ui::store::{Store, StoredPasskey, User};

pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const CSRF: &str = "0123456789abcdef0123456789abcdef";

/// The test model: `CLOISTER_MODEL`, else the cache model-runner/scripts/fetch-model.sh
/// fills. None (the caller skips, loudly) only outside CI.
pub fn model_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CLOISTER_MODEL") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var("CLOISTER_CACHE").unwrap_or_else(|_| "/var/cache/cloister".into());
    let p = PathBuf::from(cache).join("models").join(MODEL_FILE);
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the test model is missing: run model-runner/scripts/fetch-model.sh"
    );
    eprintln!("SKIPPED: no test model; run model-runner/scripts/fetch-model.sh");
    None
}

/// Starts model-runner's HTTP API on the real model, on a loopback port, in this process;
/// returns its address. The model is loaded before this returns.
pub async fn spawn_model_runner(model: &Path) -> SocketAddr {
    let state = AppState {
        runner: Arc::new(OnceLock::new()),
        limits: ApiLimits::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve_tcp(listener, router(state.clone())));
    let path = model.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || Model::load(&path, 2))
        .await
        .unwrap()
        .expect("the test model loads");
    let shape = loaded.model.config.kv_shape();
    let config = ServiceConfig {
        engine: EngineConfig {
            block_tokens: 16,
            kv_blocks: KvStore::blocks_for_budget(shape, 16, 256 << 20),
            max_batch_tokens: 256,
            max_running: 8,
        },
        max_queued_requests: 64,
        max_queued_tokens: 65_536,
    };
    let _ = state.runner.set(Runner::start(&loaded, config));
    address
}

/// A measurements.json as `cloister measure` writes it, whose events replay to its
/// registers; `firmware` varies the MRTD.
pub fn measurements_json(firmware: &str) -> String {
    let events = |label: &str, n: usize| -> Vec<Event> {
        (0..n)
            .map(|i| {
                Event::new(
                    format!("{label} event {i}"),
                    &sha384(format!("{label}{i}").as_bytes()),
                )
            })
            .collect()
    };
    let mut m = Measurements {
        mrtd: Some(sha384(firmware.as_bytes())),
        ..Default::default()
    };
    m.events.rtmr0 = events("firmware", 5);
    m.events.rtmr1 = events("kernel", 2);
    m.events.rtmr2 = events("command line", 1);
    m.rtmr0 = replay(&m.events.rtmr0);
    m.rtmr1 = replay(&m.events.rtmr1);
    m.rtmr2 = replay(&m.events.rtmr2);
    m.rtmr3 = replay(&m.events.rtmr3);
    m.to_json()
}

/// A running `web-ui` binary.
pub struct WebUi {
    pub child: Child,
    pub address: SocketAddr,
    pub setup_code: Option<String>,
    pub spki_sha256_base64: String,
    pub state_dir: PathBuf,
    pub log_file: PathBuf,
}

impl Drop for WebUi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl WebUi {
    /// Stops the process (SIGTERM, then waits) so its logs are complete.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// The `web-ui` binary: cargo names it to integration tests; an example finds it beside
/// its own folder (`target/PROFILE/examples/..` -> `target/PROFILE/web-ui`).
pub fn web_ui_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_web-ui") {
        return PathBuf::from(path);
    }
    let me = std::env::current_exe().unwrap();
    let path = me.parent().unwrap().parent().unwrap().join("web-ui");
    assert!(
        path.exists(),
        "build the web-ui binary first (cargo build --bins)"
    );
    path
}

/// Starts `web-ui` with the simulated TEE, serving `measurements` (a file path) and talking
/// to model-runner at `model_runner`; stderr (the logs) goes to `log_file`.
pub fn start_web_ui(
    root: &Path,
    measurements: &Path,
    model_runner: SocketAddr,
    extra: &[&str],
) -> WebUi {
    let state_dir = root.join("state");
    let log_file = root.join("web-ui.log");
    let log = std::fs::File::create(&log_file).unwrap();
    let mut child = Command::new(web_ui_binary())
        .arg("--state-dir")
        .arg(&state_dir)
        .args(["--listen", "127.0.0.1", "--https-port", "0", "--no-http"])
        .arg("--supervisor-socket")
        .arg(root.join("no-supervisor.sock"))
        .args(["--tee", "simulated", "--expected-measurements"])
        .arg(measurements)
        .arg("--model-runner")
        .arg(format!("http://{model_runner}"))
        .args(extra)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    // A fresh state folder has no owner, so web-ui prints its address, its certificate's
    // key hash, then the setup code and the setup link, in that order.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut address = None;
    let mut setup_code = None;
    let mut spki = None;
    while let Some(Ok(line)) = lines.next() {
        if let Some(rest) = line.strip_prefix("web-ui: HTTPS on ") {
            address = Some(rest.trim().parse().unwrap());
        }
        if let Some(rest) = line.strip_prefix("web-ui: certificate SPKI SHA-256 ") {
            spki = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("web-ui: owner setup code (one use): ") {
            setup_code = Some(rest.trim().to_owned());
        }
        if line.starts_with("web-ui: open https://") {
            break;
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    WebUi {
        child,
        address: address.expect("web-ui printed its HTTPS address"),
        setup_code,
        spki_sha256_base64: spki.expect("web-ui printed its certificate's key hash"),
        state_dir,
        log_file,
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn account(byte: u8, name: &str, is_owner: bool) -> (User, StoredPasskey) {
    let now = now_s();
    let user = User {
        id: [byte; 16],
        name: name.into(),
        is_owner,
        created_at_s: now,
        revoked: false,
    };
    let passkey = StoredPasskey {
        credential_id: vec![byte; 32],
        user_id: user.id,
        passkey_json: "{}".into(),
        label: "passkey 1".into(),
        created_at_s: now,
        last_used_at_s: 0,
    };
    (user, passkey)
}

fn session(store: &Store, user: &User) -> String {
    let now = now_s();
    let token = format!("{:02x}", user.id[0]).repeat(32);
    store
        .create_session(&token, &user.id, now, now + 3600, now)
        .unwrap();
    token
}

/// Makes the owner (with the setup code, as the setup page would) with one passkey and a
/// signed-in session; returns the user and the session token.
pub fn owner(web_ui: &WebUi, byte: u8) -> (User, String) {
    let store = Store::open(&web_ui.state_dir).unwrap();
    let (user, passkey) = account(byte, "Olivia", true);
    let code = web_ui.setup_code.as_deref().unwrap();
    assert!(
        store
            .create_owner_with_code(code, &user, &passkey, now_s())
            .unwrap()
    );
    let token = session(&store, &user);
    (user, token)
}

/// Makes an invited user (an invitation redeemed, as the invitation page would) with one
/// passkey and a signed-in session.
pub fn invited(web_ui: &WebUi, byte: u8, name: &str) -> (User, String) {
    let store = Store::open(&web_ui.state_dir).unwrap();
    let (user, passkey) = account(byte, name, false);
    let invitation = format!("{:02x}", byte).repeat(16) + "11";
    let now = now_s();
    store
        .create_invitation(&invitation, name, now, now + 600)
        .unwrap();
    assert!(
        store
            .redeem_invitation(&invitation, &user, &passkey, now)
            .unwrap()
    );
    let token = session(&store, &user);
    (user, token)
}

/// Every file under `folder`, recursively.
pub fn files_under(folder: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![folder.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Whether `haystack` contains `needle`, byte for byte.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
