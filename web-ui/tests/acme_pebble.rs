//! ACME against a real Pebble (Debian trixie's `pebble` 2.6, installed by
//! `scripts/setup-test-deps.sh`): issuance with TLS-ALPN-01 and with HTTP-01, external
//! account binding, renewal of a short-lived certificate, renewal when the CA's renewal
//! information (ARI) asks for it earlier than the one-third rule, the old certificate still
//! served while the CA is unreachable, and a restart that serves the stored certificate
//! without issuing again.
//!
//! Each test starts its own Pebble and `pebble-challtestsrv` (as the DNS server that sends
//! every name to 127.0.0.1) on free ports, with an API certificate made by `openssl` at
//! test time. Pebble keeps rejecting 5% of nonces, as it does by default. Pebble makes a
//! fresh root on each start; the tests fetch it from the management port's `/roots/0`.
//!
//! Pebble's renewal window for a certificate that is not revoked starts a day before two
//! thirds of its lifetime, so certificates of an hour or less are due at once by ARI; the
//! tests that must not renew use week-long certificates.
//!
//! Without `/usr/bin/pebble` the tests say SKIPPED and pass, unless `CLOISTER_REQUIRE_PEBBLE=1`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cloister_web_ui::acme::RenewalReason;
use cloister_web_ui::config::{AcmeSettings, ChallengeKind, Settings};
use cloister_web_ui::{RunningServer, tls};

const DOMAIN: &str = "box.cloister.test";
/// Long enough that Pebble's renewal window lies days ahead.
const WEEK_S: u64 = 7 * 24 * 3600;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The box's ports, which Pebble validates on.
#[derive(Debug, Clone, Copy)]
struct Ports {
    https: u16,
    http: u16,
}

impl Ports {
    fn free() -> Self {
        Self {
            https: free_port(),
            http: free_port(),
        }
    }
}

fn pebble_missing() -> bool {
    let missing = !Path::new("/usr/bin/pebble").exists()
        || !Path::new("/usr/bin/pebble-challtestsrv").exists();
    if missing {
        assert!(
            std::env::var("CLOISTER_REQUIRE_PEBBLE").as_deref() != Ok("1"),
            "pebble is not installed"
        );
        eprintln!("SKIPPED: pebble is not installed (apt-get install pebble)");
    }
    missing
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A running Pebble with its DNS stand-in.
struct Pebble {
    dir: tempfile::TempDir,
    pebble: Option<Child>,
    dns: Child,
    directory_url: String,
    management: SocketAddr,
    api_root: PathBuf,
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 and TLS-ALPN-01 on the box's `ports`, issuing
    /// certificates valid for `validity_s` seconds; with `eab` (key id, base64url MAC key)
    /// it requires external account binding.
    fn start_with_eab(ports: Ports, validity_s: u64, eab: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The API certificate: a CA of our own and a leaf for localhost signed by it.
        run(Command::new("openssl").current_dir(d).args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=pebble api test ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]));
        run(Command::new("openssl").current_dir(d).args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "api.key",
            "-out",
            "api.csr",
            "-subj",
            "/CN=localhost",
        ]));
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(Command::new("openssl").current_dir(d).args([
            "x509",
            "-req",
            "-in",
            "api.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "api.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]));
        let api_root = d.join("ca.pem");
        // A port picked free can be taken before Pebble or the DNS stand-in binds it (by a
        // test beside this one, or an outgoing connection); either then exits at once, and
        // the start is tried again on fresh ports.
        let mut failures = Vec::new();
        for _ in 0..4 {
            let api_port = free_port();
            let management_port = free_port();
            let dns_port = free_port();
            let dns_management_port = free_port();
            let mut config = serde_json::json!({"pebble": {
                "listenAddress": format!("127.0.0.1:{api_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": d.join("api.pem"),
                "privateKey": d.join("api.key"),
                "httpPort": ports.http,
                "tlsPort": ports.https,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_s,
            }});
            if let Some((kid, key)) = eab {
                config["pebble"]["externalAccountBindingRequired"] = true.into();
                config["pebble"]["externalAccountMACKeys"] = serde_json::json!({ kid: key });
            }
            std::fs::write(d.join("pebble.json"), config.to_string()).unwrap();
            let dns_log = d.join("challtestsrv.log");
            let dns_log_file = std::fs::File::create(&dns_log).unwrap();
            let mut dns = Command::new("pebble-challtestsrv")
                .args([
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                    "-dns01",
                    &format!("127.0.0.1:{dns_port}"),
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    &format!("127.0.0.1:{dns_management_port}"),
                ])
                .stdout(dns_log_file.try_clone().unwrap())
                .stderr(dns_log_file)
                .spawn()
                .unwrap();
            let dns_address = SocketAddr::from(([127, 0, 0, 1], dns_management_port));
            if let Err(why) = wait_for_listener(&mut dns, dns_address, &dns_log) {
                failures.push(why);
                continue;
            }
            let log = d.join("pebble.log");
            let mut pebble = spawn_pebble(d, dns_port, &log);
            let api_address = SocketAddr::from(([127, 0, 0, 1], api_port));
            if let Err(why) = wait_for_listener(&mut pebble, api_address, &log) {
                failures.push(why);
                let _ = dns.kill();
                let _ = dns.wait();
                continue;
            }
            return Self {
                dir,
                pebble: Some(pebble),
                dns,
                directory_url: format!("https://localhost:{api_port}/dir"),
                management: SocketAddr::from(([127, 0, 0, 1], management_port)),
                api_root,
            };
        }
        panic!("Pebble did not start: {failures:#?}");
    }

    /// Stops Pebble (the DNS stand-in stays), so the CA is unreachable.
    fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pebble's current root, from the management port.
    async fn root_pem(&self) -> String {
        let mut stream = common::tls_connect(self.management, "localhost").await;
        let answer = common::exchange(
            &mut stream,
            b"GET /roots/0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let start = text
            .find("-----BEGIN CERTIFICATE-----")
            .expect("no root in the answer");
        text[start..].to_owned()
    }

    fn acme_settings(&self, challenge: ChallengeKind) -> AcmeSettings {
        let mut acme = AcmeSettings::new(self.directory_url.clone());
        acme.challenge = challenge;
        acme.ca_root_pem = Some(self.api_root.clone());
        acme.retry_min = Duration::from_secs(1);
        acme.retry_max = Duration::from_secs(4);
        acme
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}

fn spawn_pebble(dir: &Path, dns_port: u16, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new("pebble")
        .arg("-config")
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Waits until `child` listens on `address`. Says why not, with the end of its `log`, when
/// it exits first (killed after 60 s without listening).
fn wait_for_listener(child: &mut Child, address: SocketAddr, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::net::TcpStream::connect(address).is_ok() {
            return Ok(());
        }
        let why = if let Some(status) = child.try_wait().unwrap() {
            format!("exited ({status}) before listening on {address}")
        } else if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            format!("not listening on {address} after 60 s")
        } else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: String = text.lines().rev().take(10).collect::<Vec<_>>().join("\n");
        return Err(format!("{why}; last log lines, newest first:\n{tail}"));
    }
}

/// One test's Pebble, the box's ports and a fresh state folder.
struct Fixture {
    pebble: Pebble,
    ports: Ports,
    state: tempfile::TempDir,
}

/// A [`Fixture`] whose Pebble issues certificates valid for `validity_s` seconds and, with
/// `eab`, requires external account binding; `None` (the test skips) without Pebble.
fn fixture(validity_s: u64, eab: Option<(&str, &str)>) -> Option<Fixture> {
    if pebble_missing() {
        return None;
    }
    let ports = Ports::free();
    Some(Fixture {
        pebble: Pebble::start_with_eab(ports, validity_s, eab),
        ports,
        state: tempfile::tempdir().unwrap(),
    })
}

/// Starts a box for [`DOMAIN`] on `state` and `ports`, getting its certificate by `acme`.
async fn start_box(state: &Path, ports: Ports, acme: AcmeSettings) -> RunningServer {
    let mut settings = Settings::new(state);
    settings.listen_address = [127, 0, 0, 1].into();
    settings.https_port = ports.https;
    settings.http_port = Some(ports.http);
    settings.domain = Some(DOMAIN.to_owned());
    settings.acme = Some(acme);
    settings.supervisor_socket = state.join("no-supervisor.sock");
    cloister_web_ui::start(settings).await.unwrap()
}

/// Starts a box and waits until it serves its first certificate from the CA, for [`DOMAIN`].
async fn start_and_issue(
    state: &Path,
    ports: Ports,
    acme: AcmeSettings,
) -> (RunningServer, tls::CertificateFacts) {
    let server = start_box(state, ports, acme).await;
    let issued = wait_for_issued(&server, None, Duration::from_secs(90)).await;
    assert_eq!(issued.names, vec![DOMAIN.to_owned()]);
    (server, issued)
}

/// `GET /healthz` over HTTPS; the whole answer.
async fn healthz(server: &RunningServer) -> String {
    let mut stream = common::tls_connect(server.https_address, DOMAIN).await;
    let answer = common::exchange(
        &mut stream,
        b"GET /healthz HTTP/1.1\r\nHost: box.cloister.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Waits until the certificate manager's status passes `check`; returns that status.
async fn wait_for_status(
    server: &RunningServer,
    what: &str,
    check: impl Fn(&cloister_web_ui::acme::CertificateStatus) -> bool,
) -> cloister_web_ui::acme::CertificateStatus {
    let manager = server.state.certificates.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = manager.status();
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: not in time; {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the server presents a CA-issued certificate different from `not`.
async fn wait_for_issued(
    server: &RunningServer,
    not: Option<&str>,
    limit: Duration,
) -> tls::CertificateFacts {
    let deadline = Instant::now() + limit;
    loop {
        let leaf = common::served_leaf(server.https_address, DOMAIN).await;
        let facts = tls::certificate_facts(&leaf).unwrap();
        if !facts.self_signed && Some(facts.fingerprint_sha256.as_str()) != not {
            return facts;
        }
        let status = server.state.certificates.as_ref().unwrap().status();
        assert!(
            Instant::now() < deadline,
            "no new certificate in time; last error: {:?}",
            status.last_error
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Checks the served chain up to Pebble's root with openssl.
async fn assert_chain_verifies(pebble: &Pebble, server: &RunningServer) {
    let stored = server.state.store.certificate(DOMAIN).unwrap().unwrap();
    let d = pebble.dir.path();
    let root = pebble.root_pem().await;
    std::fs::write(d.join("root.pem"), root).unwrap();
    let mut blocks = stored
        .chain_pem
        .split_inclusive("-----END CERTIFICATE-----\n");
    std::fs::write(d.join("leaf.pem"), blocks.next().unwrap()).unwrap();
    std::fs::write(d.join("intermediates.pem"), blocks.collect::<String>()).unwrap();
    run(Command::new("openssl").current_dir(d).args([
        "verify",
        "-CAfile",
        "root.pem",
        "-untrusted",
        "intermediates.pem",
        "leaf.pem",
    ]));
    // The key never left: the stored key matches the certificate, and it was never in a
    // request to the CA (only the CSR was).
    assert!(stored.key_pem.contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_and_a_restart_serves_the_stored_certificate() {
    let Some(test) = fixture(WEEK_S, None) else {
        return;
    };
    let acme = test.pebble.acme_settings(ChallengeKind::TlsAlpn01);
    let (server, issued) = start_and_issue(test.state.path(), test.ports, acme.clone()).await;
    assert_chain_verifies(&test.pebble, &server).await;
    let status = server.state.certificates.as_ref().unwrap().status();
    let caa = status.caa_record.unwrap();
    assert!(caa.starts_with(&format!("{DOMAIN}. IN CAA 0 issue \"")));
    assert!(caa.contains(&format!("accounturi={}", status.account_url.unwrap())));
    server.stop().await;

    // Restart on the same state: the stored certificate is served from the first handshake
    // and nothing new is issued.
    let server = start_box(test.state.path(), test.ports, acme).await;
    let leaf = common::served_leaf(server.https_address, DOMAIN).await;
    assert_eq!(
        tls::certificate_facts(&leaf).unwrap().fingerprint_sha256,
        issued.fingerprint_sha256
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = server.state.certificates.as_ref().unwrap().status();
    assert_eq!(status.issued_by_this_process, 0);
    assert!(
        status.next_attempt_at_s.is_some(),
        "the renewal is scheduled"
    );
    let leaf = common::served_leaf(server.https_address, DOMAIN).await;
    assert_eq!(
        tls::certificate_facts(&leaf).unwrap().fingerprint_sha256,
        issued.fingerprint_sha256
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_issues() {
    let Some(test) = fixture(WEEK_S, None) else {
        return;
    };
    let acme = test.pebble.acme_settings(ChallengeKind::Http01);
    let (server, _) = start_and_issue(test.state.path(), test.ports, acme).await;
    assert_chain_verifies(&test.pebble, &server).await;
    // With a CA's certificate, HSTS is on.
    assert!(
        healthz(&server)
            .await
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_and_kept_while_the_ca_is_down() {
    // 30 s certificates: due by ARI at once, and by the one-third rule 20 s after issuance.
    let Some(mut test) = fixture(30, None) else {
        return;
    };
    let acme = test.pebble.acme_settings(ChallengeKind::TlsAlpn01);
    let (server, first) = start_and_issue(test.state.path(), test.ports, acme).await;
    let second = wait_for_issued(
        &server,
        Some(&first.fingerprint_sha256),
        Duration::from_secs(90),
    )
    .await;
    assert!(second.not_after_s >= first.not_after_s);

    // The CA goes away: renewal fails, retries back off, the current certificate stays.
    test.pebble.stop();
    wait_for_status(&server, "a failed renewal", |s| s.last_error.is_some()).await;
    // ARI kept renewing until the CA went away, so the last good certificate is the
    // stored one, not necessarily `second`.
    let stored = server.state.store.certificate(DOMAIN).unwrap().unwrap();
    let stored_leaf = rustls_pemfile::certs(&mut stored.chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let last_good = tls::certificate_facts(stored_leaf.as_ref()).unwrap();
    let served = common::served_leaf(server.https_address, DOMAIN).await;
    let served = tls::certificate_facts(&served).unwrap();
    assert!(
        !served.self_signed,
        "a certificate from the CA is still served"
    );
    assert!(served.not_after_s >= second.not_after_s);
    assert_eq!(
        served.fingerprint_sha256, last_good.fingerprint_sha256,
        "the last good certificate is served"
    );
    assert_eq!(
        common::status_of(healthz(&server).await.as_bytes()),
        Some(200)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_information_earlier_than_the_one_third_rule_renews() {
    use instant_acme::{Account, RevocationReason, RevocationRequest};
    let Some(test) = fixture(WEEK_S, None) else {
        return;
    };
    let mut acme = test.pebble.acme_settings(ChallengeKind::TlsAlpn01);
    acme.renewal_info_recheck_max = Duration::from_secs(1);
    let (server, first) = start_and_issue(test.state.path(), test.ports, acme).await;
    let third_left = first.not_after_s - (first.not_after_s - first.not_before_s) / 3;

    // Pebble suggests a window from a day before the two-thirds point; the box picks a time
    // in it and renews then or at the one-third point, whichever comes first.
    let status = wait_for_status(&server, "renewal information", |s| {
        s.renewal_window.is_some() && s.next_attempt_at_s.is_some()
    })
    .await;
    let window = status.renewal_window.unwrap();
    assert!(
        window.start_s < third_left,
        "{window:?}, third left at {third_left}"
    );
    assert!((window.start_s..=window.end_s).contains(&window.chosen_s));
    assert_eq!(
        status.next_attempt_at_s,
        Some(window.chosen_s.min(third_left))
    );
    assert_eq!(status.issued_by_this_process, 1);

    // The CA revokes the certificate (here: the account owner asks it to); its renewal
    // information now says "renew now", days before a third of the lifetime is left.
    let (credentials, _) = server
        .state
        .store
        .acme_account(&test.pebble.directory_url)
        .unwrap()
        .unwrap();
    let account = Account::builder_with_root(&test.pebble.api_root)
        .unwrap()
        .from_credentials(serde_json::from_str(&credentials).unwrap())
        .await
        .unwrap();
    let leaf = rustls::pki_types::CertificateDer::from(
        common::served_leaf(server.https_address, DOMAIN).await,
    );
    account
        .revoke(&RevocationRequest {
            certificate: &leaf,
            reason: Some(RevocationReason::KeyCompromise),
        })
        .await
        .unwrap();
    let second = wait_for_issued(
        &server,
        Some(&first.fingerprint_sha256),
        Duration::from_secs(60),
    )
    .await;
    assert!(cloister_web_ui::clock::now_s() < third_left);
    let status = server.state.certificates.as_ref().unwrap().status();
    assert_eq!(
        status.last_renewal_reason,
        Some(RenewalReason::RenewalInformation)
    );
    assert_eq!(status.issued_by_this_process, 2);
    assert!(second.not_after_s >= first.not_after_s);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding_is_sent_when_configured() {
    use base64::Engine as _;
    const KID: &str = "kid-cloister";
    const KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let Some(test) = fixture(WEEK_S, Some((KID, KEY))) else {
        return;
    };

    // Without the binding the CA refuses the account, and the box keeps its self-signed
    // certificate.
    let server = start_box(
        test.state.path(),
        test.ports,
        test.pebble.acme_settings(ChallengeKind::TlsAlpn01),
    )
    .await;
    let status = wait_for_status(&server, "an account without EAB refused", |s| {
        s.last_error.is_some()
    })
    .await;
    assert!(server.state.resolver.facts().self_signed);
    assert!(status.account_url.is_none());
    server.stop().await;

    // With it, issuance works.
    let mut acme = test.pebble.acme_settings(ChallengeKind::TlsAlpn01);
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(KEY)
        .unwrap();
    acme.external_account = Some((KID.to_owned(), key));
    let state = tempfile::tempdir().unwrap();
    let (server, _) = start_and_issue(state.path(), test.ports, acme).await;
    server.stop().await;
}
