//! The library entry point as init uses it: `run` in-process, ended by a `reboot` request.
//! One test only in this file: while `run` runs it reaps every child of the test process.

mod common;

use std::time::{Duration, Instant};

use cloister_supervisor::control::{ControlClient, Request};
use cloister_supervisor::{ShutdownAction, StopOutcome, SupervisorConfig};
use common::service;

#[test]
fn run_in_process_returns_the_requested_action_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("services");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("a.toml"),
        service(&["ready"]) + "ready = \"notify\"\n",
    )
    .unwrap();
    std::fs::write(
        manifests.join("b.toml"),
        service(&[]) + "requires = [\"a\"]\n",
    )
    .unwrap();
    let config = SupervisorConfig {
        manifest_dir: manifests,
        control_socket: dir.path().join("ctl.sock"),
        runtime_dir: dir.path().join("run"),
        pid1: false,
        host_channel: None,
    };
    let socket = config.control_socket.clone();
    let supervisor = std::thread::spawn(move || cloister_supervisor::run(config));

    let start = Instant::now();
    let mut client = loop {
        if let Ok(client) = ControlClient::connect(&socket) {
            break client;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no control socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    loop {
        let services = client.request(&Request::List).unwrap().services.unwrap();
        if services.iter().all(|s| s.state == "running") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not running: {services:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(client.request(&Request::Reboot).unwrap().ok);
    let report = supervisor.join().unwrap().unwrap();
    assert_eq!(report.action, ShutdownAction::Reboot);
    let order: Vec<&str> = report.services.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(order, ["b", "a"], "dependents stop first");
    assert!(
        report
            .services
            .iter()
            .all(|s| s.outcome == StopOutcome::Stopped)
    );
    // The sockets are gone once it returns.
    assert!(!socket.exists());
    assert!(!dir.path().join("run/notify/a.sock").exists());
}
