//! Restart behaviour with real processes: systemd's restart table for every exit cause under
//! every policy, backoff, the start limit, and the watchdog.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Harness, next_event, service};

const POLICIES: [&str; 7] = [
    "no",
    "always",
    "on-success",
    "on-failure",
    "on-abnormal",
    "on-abort",
    "on-watchdog",
];

/// Each exit cause: the test service's steps and extra manifest lines.
fn causes() -> Vec<(&'static str, String)> {
    vec![
        ("clean-exit", service(&["exit", "0"])),
        ("unclean-exit", service(&["exit", "3"])),
        ("clean-signal", service(&["raise", "TERM"])),
        ("unclean-signal", service(&["raise", "SEGV"])),
        (
            "start-timeout",
            service(&[]) + "ready = \"notify\"\nstart_timeout_ms = 300\nstop_timeout_ms = 2000\n",
        ),
        (
            "watchdog",
            service(&["ready", "ping", "2"])
                + "ready = \"notify\"\nwatchdog_ms = 300\nstop_timeout_ms = 2000\n",
        ),
    ]
}

/// systemd.service(5), table 2: which policies restart after which cause.
fn systemd_restarts(cause: &str, policy: &str) -> bool {
    match policy {
        "no" => false,
        "always" => true,
        "on-success" => matches!(cause, "clean-exit" | "clean-signal"),
        "on-failure" => !matches!(cause, "clean-exit" | "clean-signal"),
        "on-abnormal" => matches!(cause, "unclean-signal" | "start-timeout" | "watchdog"),
        "on-abort" => cause == "unclean-signal",
        "on-watchdog" => cause == "watchdog",
        _ => unreachable!(),
    }
}

#[test]
fn restart_matrix_matches_systemd() {
    let mut manifests = Vec::new();
    for (cause, text) in causes() {
        for policy in POLICIES {
            let manifest = format!(
                "{text}restart = \"{policy}\"\nrestart_delay_ms = 600000\nrestart_delay_max_ms = 600000\n"
            );
            manifests.push((format!("{cause}.{policy}"), manifest));
        }
    }
    let refs: Vec<(&str, String)> = manifests
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let harness = Harness::start(&refs);
    // Wait until every service's first run has ended: a restart delay of 10 minutes keeps a
    // service that will restart in `auto-restart`.
    let deadline = Instant::now() + Duration::from_secs(30);
    let settled: BTreeMap<String, _> = loop {
        let (done, running): (Vec<_>, Vec<_>) = harness
            .list()
            .into_iter()
            .partition(|s| matches!(s.state.as_str(), "auto-restart" | "failed" | "inactive"));
        if running.is_empty() {
            break done.into_iter().map(|s| (s.name.clone(), s)).collect();
        }
        assert!(Instant::now() < deadline, "still running: {running:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    for (cause, _) in causes() {
        for policy in POLICIES {
            let info = &settled[&format!("{cause}.{policy}")];
            let expected = if systemd_restarts(cause, policy) {
                "auto-restart"
            } else if matches!(cause, "clean-exit" | "clean-signal") {
                "inactive"
            } else {
                "failed"
            };
            assert_eq!(
                info.state, expected,
                "{cause} under restart={policy}: {info:?}"
            );
            assert_eq!(
                info.restarts,
                u32::from(expected == "auto-restart"),
                "{info:?}"
            );
            let last_exit = info.last_exit.as_deref().unwrap_or_default();
            let expected_exit = match cause {
                "clean-exit" => "exited 0",
                "unclean-exit" => "exited 3",
                "clean-signal" => "killed by SIGTERM",
                "unclean-signal" => "killed by SIGSEGV",
                "start-timeout" => "start timeout, then killed by SIGTERM",
                "watchdog" => "watchdog timeout, then killed by SIGABRT",
                _ => unreachable!(),
            };
            assert_eq!(last_exit, expected_exit, "{cause} under restart={policy}");
        }
    }
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let harness = Harness::start(&[(
        "crashy",
        service(&["sleep", "300", "exit", "1"])
            + "restart = \"always\"\nrestart_delay_ms = 40\nrestart_delay_max_ms = 320\nstart_limit_interval_ms = 0\n",
    )]);
    let mut events = harness.events();
    let mut delays = Vec::new();
    let mut scheduled_at = Vec::new();
    let mut started_at = Vec::new();
    while started_at.len() < 6 {
        let event = next_event(&mut events, |e| e.service == "crashy");
        match event.state.as_str() {
            "auto-restart" => {
                delays.push(event.restart_delay_ms.unwrap());
                scheduled_at.push(event.boottime_ms);
            }
            "running" if !scheduled_at.is_empty() => started_at.push(event.boottime_ms),
            _ => {}
        }
    }
    assert_eq!(delays[..6], [40, 80, 160, 320, 320, 320]);
    // Each restart waited at least its delay.
    for (n, (scheduled, started)) in scheduled_at.iter().zip(&started_at).enumerate() {
        assert!(started - scheduled >= delays[n], "restart {n} came early");
    }
}

#[test]
fn start_limit_marks_failed_and_others_keep_running() {
    let harness = Harness::start(&[
        (
            "flaky",
            service(&["exit", "1"])
                + "restart = \"on-failure\"\nrestart_delay_ms = 0\nstart_limit_burst = 3\nstart_limit_interval_ms = 60000\n",
        ),
        ("steady", service(&[])),
    ]);
    let info = harness.wait_for_state("flaky", "failed", Duration::from_secs(10));
    // Three starts were allowed (two automatic restarts), the fourth hit the limit.
    assert_eq!(info.restarts, 3, "{info:?}");
    assert!(info.status.unwrap().contains("start limit"));
    let starts = harness.stderr().matches("flaky: started").count();
    assert_eq!(starts, 3);
    assert_eq!(harness.info("steady").state, "running");
    // An operator start clears the limit.
    assert!(
        harness
            .request(&cloister_supervisor::Request::Start {
                service: "flaky".into()
            })
            .ok
    );
    harness.wait_until("a fresh start", Duration::from_secs(10), || {
        harness.stderr().matches("flaky: started").count() > 3
    });
}

#[test]
fn start_limit_action_poweroff_shuts_down() {
    let mut harness = Harness::start(&[
        (
            "vital",
            service(&["exit", "1"])
                + "restart_delay_ms = 0\nstart_limit_burst = 2\nstart_limit_action = \"poweroff\"\n",
        ),
        ("other", service(&[])),
    ]);
    let report = harness.wait_exit();
    assert_eq!(report["action"], "poweroff");
    let other = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "other")
        .unwrap();
    assert_eq!(other["outcome"], "stopped");
}

#[test]
fn watchdog_aborts_then_restarts() {
    let harness = Harness::start(&[(
        "hangs",
        service(&["ready", "ping", "3"])
            + "ready = \"notify\"\nwatchdog_ms = 200\nrestart = \"on-failure\"\nrestart_delay_ms = 0\nstop_timeout_ms = 5000\n",
    )]);
    harness.wait_until("a watchdog restart", Duration::from_secs(10), || {
        harness.info("hangs").restarts >= 1
    });
    let info = harness.info("hangs");
    assert_eq!(
        info.last_exit.as_deref(),
        Some("watchdog timeout, then killed by SIGABRT")
    );
    harness.wait_for_state("hangs", "running", Duration::from_secs(10));
}

#[test]
fn watchdog_kills_what_ignores_sigabrt() {
    let harness = Harness::start(&[(
        "stubborn",
        service(&["ignore", "ABRT", "ready", "ping", "2"])
            + "ready = \"notify\"\nwatchdog_ms = 200\nrestart = \"on-watchdog\"\nrestart_delay_ms = 0\nstop_timeout_ms = 300\n",
    )]);
    let start = Instant::now();
    let mut events = harness.events();
    let event = next_event(&mut events, |e| {
        e.state == "auto-restart" || e.state == "waiting"
    });
    assert_eq!(
        event.last_exit.as_deref(),
        Some("watchdog timeout, then killed by SIGKILL")
    );
    // SIGABRT first, then SIGKILL only after the stop timeout.
    let log = harness.stderr();
    let abort = log.find("sending SIGABRT").expect("SIGABRT was sent");
    let kill = log.find("sending SIGKILL").expect("SIGKILL was sent");
    assert!(abort < kill);
    assert!(start.elapsed() >= Duration::from_millis(300));
    harness.wait_for_state("stubborn", "running", Duration::from_secs(10));
    assert_eq!(harness.info("stubborn").restarts, 1);
}
