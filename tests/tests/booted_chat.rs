//! The README's main flow, end to end under QEMU: build the image with the model and the
//! SIMULATED TEE (`cloister build --tee simulated`), boot it as `cloister run` does (TCG,
//! web ports forwarded to 127.0.0.1, the expected measurements passed through fw_cfg),
//! wait until web-ui is ready, then act as a client from the host: fetch `/attestation`
//! over the forwarded HTTPS port and verify it (cloister-measurements, accepting the
//! simulation root only because we ask), register the owner's passkey with a software
//! authenticator, seal a chat request to the attested key (cloister-protocol) and read
//! the streamed, sealed answer. Prints the timings (build, boot to ready, the chat).

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloister_image::build::{self, BuildOptions, TeeChoice};
use cloister_image::progress::Progress;
use cloister_image::qemu::{self, Accelerator, Console, FwCfgFile, PortForward, RunSettings};
use cloister_measurements::Measurements;
use cloister_measurements::attestation;
use cloister_protocol::attestation::Bundle;
use cloister_protocol::{ChatRequest, ResponseEvent};
use cloister_tests::{KillOnDrop, serial};
use support::{https, passkey};

/// web-ui's HTTPS and plain HTTP ports in the guest (image/services/web-ui.toml).
const GUEST_HTTPS_PORT: u16 = 443;
const GUEST_HTTP_PORT: u16 = 80;
/// The origin web-ui's manifest gives its passkeys (`--public-https-port 8443`).
const ORIGIN: &str = "https://localhost:8443";
const HOST: &str = "localhost:8443";
/// Guest memory and vCPUs: `cloister run`'s defaults.
const MEMORY_MIB: u32 = 2048;
const CPUS: u32 = 2;
/// From QEMU's start to web-ui's readiness: about a minute under TCG here; a loaded CI
/// machine may take several times that.
const READY_DEADLINE_S: u64 = 480;
/// The console line web-ui prints with the owner's one-time setup code.
const SETUP_CODE_LINE: &str = "web-ui: owner setup code (one use): ";
/// The double-submit CSRF token this client uses (cookie and header).
const CSRF: &str = "00112233445566778899aabbccddeeff";
/// What the user asks.
const PROMPT: &str = "Say hello to the booted box.";
/// Tokens asked for: the answer only has to be non-empty.
const MAX_TOKENS: u32 = 8;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Prints the guest's serial console (every service logs there) when the test fails.
struct SerialOnFailure(std::path::PathBuf);

impl Drop for SerialOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("serial log ({}):\n{text}", self.0.display());
        }
    }
}

fn post_json(
    addr: SocketAddr,
    path: &str,
    session: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> https::Response {
    let cookie = match session {
        Some(s) => format!("__Host-csrf={CSRF}; __Host-session={s}"),
        None => format!("__Host-csrf={CSRF}"),
    };
    https::request(
        addr,
        HOST,
        "POST",
        path,
        &[
            ("Origin", ORIGIN),
            ("Content-Type", content_type),
            ("X-CSRF-Token", CSRF),
            ("Cookie", &cookie),
        ],
        body,
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

#[test]
fn a_chat_through_the_forwarded_port_of_the_booted_image_gets_an_answer() {
    let qemu_binary = qemu::find_qemu().expect("QEMU is needed: apt-get install qemu-system-x86");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image");

    // Build: the model and the simulated TEE.
    let started = Instant::now();
    let mut opts = BuildOptions::new(cloister_tests::workspace_root(), &image);
    opts.tee = TeeChoice::Simulated;
    opts.target_dir = Some(cloister_tests::guest_target_dir(&build::default_cache_dir()));
    opts.progress = Progress::stderr();
    let built = build::build(&opts).expect("the simulated image builds");
    assert!(built.manifest.model_included);
    assert_eq!(built.manifest.tee, TeeChoice::Simulated);
    let build_took = started.elapsed();

    // The expected measurements, as `cloister run` computes them for a simulated image.
    let firmware = build::tdvf(
        &cloister_tests::workspace_root(),
        &build::default_cache_dir(),
        &Progress::stderr(),
    )
    .expect("the pinned OVMF");
    let measurements_json =
        cloister_image::expected::measurements_json(&image, &firmware, MEMORY_MIB, CPUS)
            .expect("the image measures");
    let measurements_file = dir.path().join("measurements.json");
    std::fs::write(&measurements_file, &measurements_json).unwrap();
    let expected: Measurements = serde_json::from_str(&measurements_json).unwrap();

    // Boot as `cloister run` does.
    let log = dir.path().join("serial.log");
    let _serial_on_failure = SerialOnFailure(log.clone());
    let (https_port, http_port) = (cloister_tests::free_port(), cloister_tests::free_port());
    let settings = RunSettings {
        image: image.clone(),
        memory_mib: MEMORY_MIB,
        cpus: CPUS,
        ports: vec![
            PortForward {
                host: https_port,
                guest: GUEST_HTTPS_PORT,
            },
            PortForward {
                host: http_port,
                guest: GUEST_HTTP_PORT,
            },
        ],
        accelerator: Accelerator::Tcg,
        console: Console::File(log.clone()),
        cmdline: qemu::read_cmdline(&image).unwrap(),
        tdx: None,
        fw_cfg: vec![FwCfgFile {
            name: qemu::MEASUREMENTS_FW_CFG_NAME.into(),
            file: measurements_file,
        }],
        // The model, on its dm-verity disk, as `cloister run` attaches it.
        drives: build::model_drives(&image).expect("the image's model disk"),
    };
    let booted = Instant::now();
    let mut vm = KillOnDrop(
        Command::new(&qemu_binary)
            .args(qemu::command_line(&settings))
            .args(["-monitor", "none"])
            .stdin(Stdio::null())
            .spawn()
            .expect("QEMU starts"),
    );
    let serial_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, https_port));

    // Ready: web-ui printed the setup code and answers over the forwarded port.
    let mut setup_code = None;
    let mut ready_after = None;
    while booted.elapsed() < Duration::from_secs(READY_DEADLINE_S) {
        let text = serial_text();
        if let Some(status) = vm.0.try_wait().unwrap() {
            panic!("QEMU exited early ({status}); serial log:\n{text}");
        }
        if let Some(line) = serial::first_panic(&text) {
            panic!("the guest panicked: {line}; serial log:\n{text}");
        }
        if setup_code.is_none() {
            setup_code = text.lines().find_map(|l| {
                l.split_once(SETUP_CODE_LINE)
                    .map(|(_, code)| code.trim().to_string())
            });
        }
        if setup_code.is_some()
            && let Ok(r) = https::request(
                addr,
                HOST,
                "GET",
                "/healthz",
                &[],
                b"",
                Duration::from_secs(10),
            )
            && r.status == 200
        {
            ready_after = Some(booted.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let ready_after = ready_after.unwrap_or_else(|| {
        panic!(
            "web-ui was not ready {READY_DEADLINE_S} s after QEMU started; serial log:\n{}",
            serial_text()
        )
    });
    let setup_code = setup_code.unwrap();

    // The attestation, over the forwarded port, verified as a client would.
    let nonce: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    let answer = https::request(
        addr,
        HOST,
        "GET",
        &format!("/attestation?nonce={}", hex::encode(&nonce)),
        &[],
        b"",
        Duration::from_secs(120),
    )
    .expect("GET /attestation");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.header(cloister_protocol::attestation::SIMULATED_HEADER_NAME),
        Some(cloister_protocol::attestation::SIMULATED_HEADER_VALUE),
        "a simulated box marks every answer"
    );
    let bundle = Bundle::from_json(&answer.body).expect("a well-formed bundle");
    let now_unix_s = now_ms() / 1000;
    let verify = |accept_simulated| {
        attestation::verify(&attestation::Inputs {
            bundle_json: &answer.body,
            expected: Some(&expected),
            nonce_sent: &nonce,
            observed_tls_spki_sha256: Some(&answer.tls_spki_sha256),
            now_unix_s,
            accept_simulated,
        })
    };
    let report = verify(true);
    assert!(
        report.ok && report.simulated,
        "the attestation fails: {:?}\n{report:#?}",
        report.failed()
    );
    let strict = verify(false);
    assert!(
        !strict.ok && strict.failed().contains(&"quote_signature"),
        "without accept_simulated the simulation root must be refused: {strict:#?}"
    );

    // The owner's passkey, registered with the setup code from the console.
    let begin = post_json(
        addr,
        "/api/setup/begin",
        None,
        "application/json",
        serde_json::json!({"code": setup_code, "name": "Owner"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(begin.status, 200, "setup begin: {}", begin.text());
    let begun: serde_json::Value = serde_json::from_slice(&begin.body).unwrap();
    let (credential, _passkey) =
        passkey::register(&begun["options"], ORIGIN).expect("the authenticator answers");
    let finish = post_json(
        addr,
        "/api/setup/finish",
        None,
        "application/json",
        serde_json::json!({"ceremony": begun["ceremony"], "credential": credential})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(finish.status, 200, "setup finish: {}", finish.text());
    let session = finish
        .headers_named("set-cookie")
        .find_map(|c| c.strip_prefix("__Host-session="))
        .and_then(|c| c.split(';').next())
        .expect("signed in after registering")
        .to_string();

    // A sealed chat request to the attested key; the sealed answer streams back.
    let chat_started = Instant::now();
    let request = ChatRequest {
        ts_ms: now_ms(),
        conversation: None,
        request: serde_json::json!({
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }),
    };
    let (sealed, mut opener) = cloister_protocol::seal_request(
        &bundle.hpke_public_key,
        bundle.hpke_key_id,
        &request.to_json_bytes(),
    )
    .expect("the request seals");
    let reply = post_json(
        addr,
        "/api/chat",
        Some(&session),
        CHAT_CONTENT_TYPE,
        &sealed,
    );
    assert_eq!(reply.status, 200, "chat: {}", reply.text());
    let sealed_body = &reply.body;
    assert!(
        !sealed_body
            .windows(b"hello".len())
            .any(|w| w.eq_ignore_ascii_case(b"hello")),
        "the answer travels sealed"
    );
    let mut events = Vec::new();
    // Feed the body in small pieces, as it arrives from a stream.
    for piece in sealed_body.chunks(7) {
        for chunk in opener.push(piece).expect("every chunk opens") {
            events.push(ResponseEvent::from_json_bytes(&chunk.plaintext).expect("an event"));
        }
    }
    opener
        .finish()
        .expect("the answer ends with its final chunk");
    let chat_took = chat_started.elapsed();
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            ResponseEvent::Delta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        matches!(events.first(), Some(ResponseEvent::Meta { .. })),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(ResponseEvent::Done { .. })),
        "{events:?}"
    );
    assert!(!text.trim().is_empty(), "an empty answer: {events:?}");

    // The owner's console shows model-runner's queue and KV figures, read over its Unix
    // socket inside the box, not "not reachable".
    let console = https::request(
        addr,
        HOST,
        "GET",
        "/console",
        &[("Cookie", &format!("__Host-session={session}"))],
        &[],
        Duration::from_secs(60),
    )
    .expect("GET /console");
    assert_eq!(console.status, 200, "console: {}", console.text());
    let console = console.text();
    assert!(
        !console.contains("metrics are not reachable"),
        "the console cannot read model-runner's metrics"
    );
    for metric in ["cloister_queue_depth", "cloister_kv_blocks_used"] {
        assert!(console.contains(metric), "the console lacks {metric}");
    }

    let log_text = serial_text();
    // The services' log lines reach the serial console as plain text: no ANSI colour codes.
    let coloured: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains("web-ui") || l.contains("model-runner"))
        .filter(|l| l.contains('\u{1b}'))
        .collect();
    assert!(
        coloured.is_empty(),
        "escape codes on the serial console: {coloured:?}"
    );
    assert_eq!(
        serial::first_panic(&log_text),
        None,
        "serial log:\n{log_text}"
    );
    // Neither the prompt nor the answer reached the console, where every service logs.
    assert!(
        !log_text.contains(PROMPT),
        "the prompt is in the serial log"
    );
    assert!(
        !log_text.contains(text.trim()),
        "the answer is in the serial log"
    );
    println!(
        "booted chat under TCG: build {build_took:?}, QEMU start to web-ui ready {ready_after:?}, \
         chat ({MAX_TOKENS} tokens at most, {} characters) {chat_took:?}",
        text.len()
    );
    let phases = serial::phases(&log_text);
    for p in &phases {
        println!("  {:<28} {:>7} ms guest time", p.name, p.boottime_ms);
    }
    for line in log_text
        .lines()
        .filter(|l| l.contains("ready boottime_ms="))
    {
        println!("  {line}");
    }
}

/// The content type of a sealed chat request (web-ui's `chat::SEALED_REQUEST_TYPE`).
const CHAT_CONTENT_TYPE: &str = "message/cloister-chat-req";
