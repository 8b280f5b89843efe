//! A service's life around its run: operator control, log capture, identity and limits,
//! orphans, bad manifests, and ordered shutdown.

mod common;

use std::time::{Duration, Instant};

use cloister_supervisor::Request;
use common::{Harness, children, read, service, shell, zombie_children};

#[test]
fn control_socket_starts_stops_restarts_and_tails_logs() {
    let harness = Harness::start(&[(
        "web",
        service(&["print", "hello from web", "ready", "status", "up"]) + "ready = \"notify\"\n",
    )]);
    let first = harness.wait_for_state("web", "running", Duration::from_secs(10));
    assert_eq!(first.status.as_deref(), Some("up"));
    assert!(first.uptime_ms.is_some());
    harness.wait_until("the log line", Duration::from_secs(10), || {
        let logs = harness.request(&Request::Logs {
            service: "web".into(),
            lines: Some(10),
            follow: false,
        });
        logs.lines
            .unwrap()
            .iter()
            .any(|l| l.text == "hello from web")
    });

    assert!(
        harness
            .request(&Request::Restart {
                service: "web".into()
            })
            .ok
    );
    harness.wait_until("a new pid", Duration::from_secs(10), || {
        let info = harness.info("web");
        info.state == "running" && info.pid.is_some() && info.pid != first.pid
    });
    // An operator's restart is not an automatic one.
    assert_eq!(harness.info("web").restarts, 0);

    assert!(
        harness
            .request(&Request::Stop {
                service: "web".into()
            })
            .ok
    );
    let stopped = harness.wait_for_state("web", "inactive", Duration::from_secs(10));
    assert_eq!(stopped.pid, None);
    assert_eq!(stopped.last_exit.as_deref(), Some("killed by SIGTERM"));

    assert!(
        harness
            .request(&Request::Start {
                service: "web".into()
            })
            .ok
    );
    harness.wait_for_state("web", "running", Duration::from_secs(10));

    let unknown = harness.request(&Request::Stop {
        service: "nope".into(),
    });
    assert!(!unknown.ok);
    assert!(unknown.error.unwrap().contains("no service named `nope`"));
}

#[test]
fn the_ctl_subcommand_talks_to_the_socket() {
    let harness = Harness::start(&[("idle", service(&[]))]);
    harness.wait_for_state("idle", "running", Duration::from_secs(10));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloister-supervisor"))
        .args(["ctl", "--socket"])
        .arg(&harness.socket)
        .arg("list")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("idle") && l.contains("running")),
        "{text}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloister-supervisor"))
        .args(["ctl", "--socket"])
        .arg(&harness.socket)
        .args(["stop", "missing"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn raw_control_protocol_rejects_garbage_and_answers_json_lines() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::PermissionsExt;
    let harness = Harness::start(&[("idle", service(&[]))]);
    let mode = std::fs::metadata(&harness.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the control socket is for root only");
    let mut stream = std::os::unix::net::UnixStream::connect(&harness.socket).unwrap();
    stream.write_all(b"not json\n{\"cmd\":\"list\"}\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["ok"], false);
    line.clear();
    reader.read_line(&mut line).unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["services"][0]["name"], "idle");
}

#[test]
fn logs_keep_long_lines_and_invalid_utf8() {
    let harness = Harness::start(&[(
        "chatty",
        shell(
            "printf 'bad \\377 byte\\n'; head -c 10000 /dev/zero | tr '\\0' x; echo; echo err >&2; sleep 600",
        ) + "log_buffer_lines = 50\n",
    )]);
    let mut lines = Vec::new();
    harness.wait_until("the output", Duration::from_secs(10), || {
        lines = harness
            .request(&Request::Logs {
                service: "chatty".into(),
                lines: None,
                follow: false,
            })
            .lines
            .unwrap();
        lines.len() >= 5
    });
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert!(texts.contains(&"bad \u{fffd} byte"), "{texts:?}");
    let xs: Vec<&&str> = texts.iter().filter(|t| t.starts_with('x')).collect();
    assert_eq!(xs.iter().map(|t| t.len()).sum::<usize>(), 10_000);
    assert!(xs.iter().all(|t| t.len() <= 4096));
    let err = lines.iter().find(|l| l.text == "err").unwrap();
    assert_eq!(err.stream, cloister_supervisor::logs::Stream::Stderr);
    assert!(err.at_ms > 1_600_000_000_000);
    // Mirrored to the console with the service's name.
    assert!(harness.stderr().contains("chatty["));
    assert!(harness.stderr().contains("]: err"));
}

#[test]
fn user_group_and_open_file_limit_are_applied() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to change user");
        return;
    }
    let harness = Harness::start(&[(
        "dropped",
        shell("echo uid=$(id -u) gid=$(id -g) nofile=$(ulimit -n) home=$HOME; sleep 600")
            + "user = \"nobody\"\nlimit_nofile = 321\nmemory_max = \"64M\"\n",
    )]);
    let mut text = String::new();
    harness.wait_until("the identity line", Duration::from_secs(10), || {
        let lines = harness
            .request(&Request::Logs {
                service: "dropped".into(),
                lines: None,
                follow: false,
            })
            .lines
            .unwrap();
        text = lines.iter().map(|l| l.text.clone()).collect();
        text.contains("uid=")
    });
    assert!(text.contains("uid=65534"), "{text}");
    assert!(text.contains("nofile=321"), "{text}");
    assert!(text.contains("home=/nonexistent"), "{text}");
}

#[test]
fn orphaned_grandchildren_leave_no_zombies() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("grandchildren.txt");
    // "keeper" stays up while an intermediate shell leaves a grandchild behind: the orphan is
    // re-parented to the supervisor (a subreaper) and must be reaped when it exits.
    // "forker" exits leaving grandchildren: those in its session are killed with it; those
    // in their own session are killed through its cgroup where there is one, else reaped
    // when they exit.
    let harness = Harness::start_in(
        dir,
        &[
            (
                "keeper",
                shell(&format!(
                    "sh -c 'sleep 1 & echo $! >> {0}; sleep 1 & echo $! >> {0}'; sleep 600",
                    pids.display()
                )),
            ),
            (
                "forker",
                shell(&format!(
                    "for i in 1 2 3; do setsid sleep 1 & echo $! >> {0}; sleep 5 & done; sleep 0.2; exit 0",
                    pids.display()
                )) + "restart = \"no\"\n",
            ),
        ],
    );
    harness.wait_for_state("forker", "inactive", Duration::from_secs(10));
    harness.wait_until("the pid list", Duration::from_secs(10), || {
        read(&pids).lines().count() >= 5
    });
    let grandchildren: Vec<u32> = read(&pids)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    let adopted = children(harness.pid());
    assert!(
        grandchildren
            .iter()
            .any(|g| adopted.iter().any(|(c, _)| c == g)),
        "no grandchild was re-parented to the supervisor: {adopted:?}"
    );
    // Once they have exited, none is left as a zombie (or at all).
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(zombie_children(harness.pid()), Vec::<u32>::new());
    for pid in grandchildren {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "grandchild {pid} remains"
        );
    }
    assert_eq!(harness.info("keeper").state, "running");
}

#[test]
fn bad_manifests_are_reported_and_the_rest_start() {
    let harness = Harness::start(&[
        ("good", service(&[])),
        ("typo", service(&[]) + "restrat = \"always\"\n"),
        ("wrong-value", service(&[]) + "restart = \"sometimes\"\n"),
        ("syntax", "command = \"/bin/true\nargs = [\n".into()),
        ("no-command", "args = [\"x\"]\n".into()),
    ]);
    harness.wait_for_state("good", "running", Duration::from_secs(10));
    let response = harness.request(&Request::List);
    assert_eq!(response.services.unwrap().len(), 1);
    let errors = response.manifest_errors.unwrap();
    assert_eq!(errors.len(), 4, "{errors:?}");
    let find = |name: &str| {
        errors
            .iter()
            .find(|e| e.contains(&format!("{name}.toml")))
            .unwrap()
            .clone()
    };
    assert!(find("typo").contains(":3: field `restrat`"), "{errors:?}");
    assert!(
        find("wrong-value").contains(":3: field `restart`"),
        "{errors:?}"
    );
    assert!(find("syntax").contains("syntax.toml:"), "{errors:?}");
    assert!(find("no-command").contains("field `command`"), "{errors:?}");
}

#[test]
fn shutdown_is_ordered_and_within_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let order = dir.path().join("order.txt");
    let trap = |name: &str| {
        shell(&format!(
            "trap 'echo {name} >> {}; exit 0' TERM; while :; do sleep 0.05; done",
            order.display()
        ))
    };
    let mut harness = Harness::start_in(
        dir,
        &[
            ("base", trap("base")),
            ("middle", trap("middle") + "requires = [\"base\"]\n"),
            (
                "top",
                trap("top") + "requires = [\"middle\"]\nafter = [\"base\"]\n",
            ),
            (
                "stubborn",
                service(&["ignore", "TERM"]) + "after = [\"base\"]\nstop_timeout_ms = 400\n",
            ),
        ],
    );
    for name in ["base", "middle", "top", "stubborn"] {
        harness.wait_for_state(name, "running", Duration::from_secs(10));
    }
    std::thread::sleep(Duration::from_millis(200)); // let the shells install their traps
    let start = Instant::now();
    let report = harness.terminate();
    let took = start.elapsed();
    // Dependents stop first: top before middle before base; base waits for stubborn too.
    assert_eq!(read(&harness.path("order.txt")), "top\nmiddle\nbase\n");
    let outcomes: Vec<(String, String)> = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap().to_owned(),
                s["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let position = |name: &str| outcomes.iter().position(|(n, _)| n == name).unwrap();
    assert!(position("top") < position("middle") && position("middle") < position("base"));
    assert!(position("stubborn") < position("base"));
    assert!(
        outcomes.contains(&("stubborn".into(), "killed".into())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("top".into(), "stopped".into())),
        "{outcomes:?}"
    );
    // Within the timeouts: the stubborn service's 400 ms plus the others' quick exits.
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_eq!(report["action"], "poweroff");
}

#[test]
fn memory_max_lands_in_the_service_cgroup_where_cgroup_v2_has_the_controller() {
    let harness = Harness::start(&[("capped", service(&[]) + "memory_max = \"48M\"\n")]);
    let info = harness.wait_for_state("capped", "running", Duration::from_secs(10));
    let log = harness.stderr();
    if log.contains("memory_max is not applied") {
        // This host's cgroup v2 has no memory controller (or none is mounted): the supervisor
        // said so, and the service runs anyway.
        assert!(
            log.contains("capped: memory_max not applied") || log.contains("no writable cgroup v2")
        );
        return;
    }
    let pid = info.pid.unwrap();
    let cgroup = read(std::path::Path::new(&format!("/proc/{pid}/cgroup")));
    let relative = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_owned();
    assert!(relative.ends_with("/capped.service"), "{relative}");
    let mountinfo = read(std::path::Path::new("/proc/self/mountinfo"));
    let mount = mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split_whitespace().nth(4).unwrap().to_owned())
        })
        .unwrap();
    let max = read(std::path::Path::new(&format!(
        "{mount}{relative}/memory.max"
    )));
    assert_eq!(max.trim(), (48u64 << 20).to_string());
}

#[test]
fn following_a_log_streams_every_new_line_after_the_tail() {
    let harness = Harness::start(&[(
        "ticker",
        shell("i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.05; done"),
    )]);
    harness.wait_for_state("ticker", "running", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let mut client = harness.client();
    let reply = client
        .request(&Request::Logs {
            service: "ticker".into(),
            lines: Some(2),
            follow: true,
        })
        .unwrap();
    let tail = reply.lines.unwrap();
    assert_eq!(tail.len(), 2);
    let number = |text: &str| text.strip_prefix("tick ").unwrap().parse::<u32>().unwrap();
    let first = number(&tail[1].text) + 1;
    for expected in first..first + 5 {
        let line = client.next_log_line().unwrap();
        assert_eq!(number(&line.text), expected, "a line was lost or repeated");
    }
}
