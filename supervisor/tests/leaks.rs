//! 1,000 crash-and-restart cycles must leave the supervisor's open files and memory where
//! they were.

mod common;

use std::time::Duration;

use cloister_supervisor::Request;
use common::{Harness, fds_and_rss_kib, service};

const WARMUP_RESTARTS: u32 = 100;
const MEASURED_RESTARTS: u32 = 1_000;
/// Allocator slack allowed between the two samples (the heap may settle into new pages).
const RSS_SLACK_KIB: u64 = 256;

#[test]
fn thousand_crash_restart_cycles_leak_no_fds_or_memory() {
    let harness = Harness::start(&[(
        "crasher",
        service(&[
            "ready",
            "status",
            "about to crash",
            "print",
            "crashing",
            "exit",
            "1",
        ]) + "ready = \"notify\"\nrestart = \"always\"\nrestart_delay_ms = 0\nstart_limit_interval_ms = 0\nlog_buffer_lines = 20\n",
    )]);
    let pid = harness.pid();
    let sample = |target: u32| {
        harness.wait_until("restarts", Duration::from_secs(120), || {
            harness.info("crasher").restarts >= target
        });
        // Stop it so no pipe or socket of a run in flight is counted, then sample.
        assert!(
            harness
                .request(&Request::Stop {
                    service: "crasher".into()
                })
                .ok
        );
        harness.wait_for_state("crasher", "inactive", Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
        let sample = fds_and_rss_kib(pid);
        assert!(
            harness
                .request(&Request::Start {
                    service: "crasher".into()
                })
                .ok
        );
        sample
    };
    let (fds_before, rss_before) = sample(WARMUP_RESTARTS);
    let (fds_after, rss_after) = sample(WARMUP_RESTARTS + MEASURED_RESTARTS);
    eprintln!("fds {fds_before} -> {fds_after}, rss {rss_before} KiB -> {rss_after} KiB");
    assert_eq!(fds_after, fds_before, "open files grew");
    assert!(
        rss_after <= rss_before + RSS_SLACK_KIB,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}
