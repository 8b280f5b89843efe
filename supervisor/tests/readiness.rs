//! Readiness through sd_notify with real programs using the `sd-notify` crate: dependency
//! ordering, sender checks, status text, abstract sockets and malformed datagrams.

mod common;

use std::time::Duration;

use common::{Harness, service, test_service};

#[test]
fn dependent_waits_for_ready_and_spoofed_ready_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let db_socket = dir.path().join("run/notify/db.sock");
    let harness = Harness::start_in(
        dir,
        &[
            (
                "db",
                service(&["sleep", "3000", "ready", "status", "accepting connections"])
                    + "ready = \"notify\"\nstart_timeout_ms = 20000\n",
            ),
            ("app", service(&[]) + "requires = [\"db\"]\n"),
            (
                "spoofer",
                service(&["sleep", "100", "spoof-ready", db_socket.to_str().unwrap()]),
            ),
        ],
    );
    harness.wait_until(
        "the spoofed READY to be rejected",
        Duration::from_secs(10),
        || harness.stderr().contains("db: notify datagram from pid"),
    );
    assert!(
        harness
            .stderr()
            .contains("rejected: it is not part of the service")
    );
    // The spoof changed nothing: db is still starting and app still waits for it.
    assert_eq!(harness.info("db").state, "starting");
    assert_eq!(harness.info("app").state, "waiting");
    assert_eq!(harness.info("app").pid, None);
    harness.wait_for_state("app", "running", Duration::from_secs(20));
    let db = harness.info("db");
    assert_eq!(db.state, "running");
    assert_eq!(db.status.as_deref(), Some("accepting connections"));
    let log = harness.stderr();
    let db_ready = log.find("supervisor: service db ready").unwrap();
    let app_started = log.find("app: started").unwrap();
    assert!(
        db_ready < app_started,
        "app started before db was ready:\n{log}"
    );
}

#[test]
fn descendants_may_notify_and_abstract_sockets_work() {
    let script = format!("{} ready status 'from a child'; sleep 600", test_service());
    let harness = Harness::start(&[
        (
            "shell-parent",
            format!("command = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\nready = \"notify\"\n"),
        ),
        (
            "abstract",
            // The sd-notify crate knows no abstract sockets; libsystemd-style clients do.
            service(&["raw", "READY=1"]) + "ready = \"notify\"\nnotify_socket = \"abstract\"\n",
        ),
    ]);
    let info = harness.wait_for_state("shell-parent", "running", Duration::from_secs(10));
    assert_eq!(info.status.as_deref(), Some("from a child"));
    harness.wait_for_state("abstract", "running", Duration::from_secs(10));
}

#[test]
fn malformed_and_oversized_datagrams_are_dropped_with_a_log_line() {
    let harness = Harness::start(&[(
        "noisy",
        service(&[
            "raw",
            "READY",
            "raw-big",
            "5000",
            "raw",
            "READY=yes",
            "sleep",
            "300",
            "ready",
        ]) + "ready = \"notify\"\n",
    )]);
    harness.wait_for_state("noisy", "running", Duration::from_secs(10));
    let log = harness.stderr();
    assert!(log.contains("noisy: malformed notify datagram"), "{log}");
    assert!(
        log.contains("5000 bytes is over the 4096-byte limit"),
        "{log}"
    );
    assert!(log.contains("invalid value for READY"), "{log}");
}

#[test]
fn exit_before_ready_fails_a_notify_service_and_its_dependents() {
    let harness = Harness::start(&[
        (
            "broken",
            service(&["exit", "2"]) + "ready = \"notify\"\nrestart = \"no\"\n",
        ),
        ("needs-broken", service(&[]) + "requires = [\"broken\"]\n"),
        ("needs-ghost", service(&[]) + "requires = [\"ghost\"]\n"),
        ("after-broken", service(&[]) + "after = [\"broken\"]\n"),
    ]);
    harness.wait_for_state("broken", "failed", Duration::from_secs(10));
    let dependent = harness.wait_for_state("needs-broken", "failed", Duration::from_secs(10));
    assert!(dependent.status.unwrap().contains("`broken` failed"));
    let ghost = harness.wait_for_state("needs-ghost", "failed", Duration::from_secs(10));
    assert!(ghost.status.unwrap().contains("no valid manifest"));
    // `after` only orders: the service starts once `broken` has settled, even as failed.
    harness.wait_for_state("after-broken", "running", Duration::from_secs(10));
}

#[test]
fn extend_timeout_reloading_and_errno_through_the_sd_notify_crate() {
    let harness = Harness::start(&[
        (
            "slow-start",
            // 300 ms to start, but it asks for 5 s more and is ready after 800 ms.
            service(&["extend", "5000000", "sleep", "800", "ready"])
                + "ready = \"notify\"\nstart_timeout_ms = 300\nrestart = \"no\"\n",
        ),
        (
            "reloader",
            service(&[
                "ready",
                "sleep",
                "300",
                "reloading",
                "errno",
                "5",
                "sleep",
                "500",
                "ready",
            ]) + "ready = \"notify\"\n",
        ),
    ]);
    let mut events = harness.events();
    let mut reloader_states = Vec::new();
    while reloader_states.last().map(String::as_str) != Some("running")
        || !reloader_states.iter().any(|s| s == "reloading")
    {
        let event = common::next_event(&mut events, |e| e.service == "reloader");
        reloader_states.push(event.state);
    }
    assert!(
        reloader_states.ends_with(&["reloading".into(), "running".into()]),
        "{reloader_states:?}"
    );
    assert_eq!(harness.info("reloader").errno, Some(5));
    let slow = harness.wait_for_state("slow-start", "running", Duration::from_secs(10));
    assert_eq!(
        slow.last_exit, None,
        "it was not stopped for its start timeout"
    );
}

#[test]
fn a_program_that_cannot_start_counts_as_failed() {
    let harness = Harness::start(&[
        (
            "missing",
            "command = \"/nonexistent/program\"\nrestart_delay_ms = 0\nstart_limit_burst = 2\n"
                .into(),
        ),
        (
            "ghost-user",
            service(&[]) + "user = \"no-such-user-here\"\nrestart = \"no\"\n",
        ),
    ]);
    let missing = harness.wait_for_state("missing", "failed", Duration::from_secs(10));
    let last = missing.last_exit.unwrap();
    assert!(
        last.starts_with("could not start: exec: No such file"),
        "{last}"
    );
    assert!(missing.status.unwrap().contains("start limit"));
    let ghost = harness.wait_for_state("ghost-user", "failed", Duration::from_secs(10));
    assert!(
        ghost
            .last_exit
            .unwrap()
            .contains("unknown user `no-such-user-here`")
    );
}
