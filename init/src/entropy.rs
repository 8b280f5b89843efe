//! Entropy at boot: is the kernel's CRNG ready, and where can its randomness come from?
//!
//! `getrandom` must not block boot forever, so the check is non-blocking first and then a
//! bounded wait. The report names the sources (RDRAND/RDSEED from CPUID, the hw_random
//! device, `random.trust_cpu`) so an operator can see what seeded the box: in a TD the
//! CPU's instructions are trusted and the host's virtio-rng is not. This module never reads
//! random bytes for its own use and never logs any.

use std::path::Path;

use crate::sys::{CpuRandom, System};

/// The longest boot waits for the kernel CRNG.
pub const CRNG_WAIT_MAX_MS: u64 = 10_000;
/// The hw_random device the kernel feeds from.
pub const HW_RNG_CURRENT_PATH: &str = "/sys/class/misc/hw_random/rng_current";
/// Where init records the report.
pub const ENTROPY_RECORD_PATH: &str = "/run/cloister/entropy";

/// The kernel CRNG's state at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrngState {
    /// Ready when init first asked.
    Ready,
    /// Ready after init waited this long.
    ReadyAfterWait { waited_ms: u64 },
    /// Still not ready after the bounded wait: boot goes on, programs that call
    /// `getrandom` will block until it is.
    NotReady { waited_ms: u64 },
}

/// Where the box's entropy comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntropyReport {
    /// The kernel CRNG.
    pub crng: CrngState,
    /// The CPU's instructions.
    pub cpu: CpuRandom,
    /// The current hw_random device (`virtio_rng.0`), if any.
    pub hw_rng: Option<String>,
    /// `random.trust_cpu=` from the command line, when given.
    pub trust_cpu: Option<bool>,
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

impl EntropyReport {
    /// One line for the console, `key=value` pairs.
    pub fn summary(&self) -> String {
        let crng = match self.crng {
            CrngState::Ready => "crng=ready waited_ms=0".to_owned(),
            CrngState::ReadyAfterWait { waited_ms } => format!("crng=ready waited_ms={waited_ms}"),
            CrngState::NotReady { waited_ms } => format!("crng=not-ready waited_ms={waited_ms}"),
        };
        let trust_cpu = match self.trust_cpu {
            Some(value) => {
                if value {
                    "on"
                } else {
                    "off"
                }
            }
            None => "default",
        };
        format!(
            "{crng} rdrand={} rdseed={} hwrng={} trust_cpu={trust_cpu}",
            yes_no(self.cpu.rdrand),
            yes_no(self.cpu.rdseed),
            self.hw_rng.as_deref().unwrap_or("none"),
        )
    }
}

/// `random.trust_cpu=` on the command line.
fn trust_cpu(cmdline: &str) -> Option<bool> {
    cmdline.split_whitespace().rev().find_map(|word| {
        match word.strip_prefix("random.trust_cpu=")? {
            "on" | "1" | "y" | "yes" | "true" => Some(true),
            "off" | "0" | "n" | "no" | "false" => Some(false),
            _ => None,
        }
    })
}

/// Checks the CRNG (waiting at most `wait_max_ms`) and gathers the sources.
pub fn check_entropy(system: &impl System, cmdline: &str, wait_max_ms: u64) -> EntropyReport {
    let crng = match system.crng_ready_now() {
        Ok(true) => CrngState::Ready,
        Ok(false) | Err(_) => {
            let start_ms = system.boottime_ms();
            let ready = system.wait_for_crng(wait_max_ms);
            let waited_ms = system.boottime_ms().saturating_sub(start_ms);
            if ready {
                CrngState::ReadyAfterWait { waited_ms }
            } else {
                tracing::warn!(waited_ms, "kernel CRNG not ready; getrandom will block");
                CrngState::NotReady { waited_ms }
            }
        }
    };
    let hw_rng = system
        .read_file(Path::new(HW_RNG_CURRENT_PATH), 256)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .filter(|name| !name.is_empty() && name != "none");
    EntropyReport {
        crng,
        cpu: system.cpu_random(),
        hw_rng,
        trust_cpu: trust_cpu(cmdline),
    }
}

/// Prints the report and records it for the services.
pub fn record(system: &impl System, report: &EntropyReport) {
    let summary = report.summary();
    system.console(&format!("init: entropy {summary}"));
    let record = summary.replace(' ', "\n") + "\n";
    if let Err(error) = system.write_file(Path::new(ENTROPY_RECORD_PATH), record.as_bytes()) {
        tracing::warn!("cannot record entropy sources in {ENTROPY_RECORD_PATH}: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, FakeSystem};

    #[test]
    fn ready_crng_does_not_wait() {
        let system = FakeSystem::new();
        system.set_cpu_random(CpuRandom {
            rdrand: true,
            rdseed: true,
        });
        system.set_file(HW_RNG_CURRENT_PATH, "virtio_rng.0\n");
        let report = check_entropy(&system, "console=ttyS0", CRNG_WAIT_MAX_MS);
        assert_eq!(report.crng, CrngState::Ready);
        assert!(
            !system
                .calls()
                .iter()
                .any(|c| matches!(c, Call::WaitForCrng(_)))
        );
        assert_eq!(
            report.summary(),
            "crng=ready waited_ms=0 rdrand=yes rdseed=yes hwrng=virtio_rng.0 trust_cpu=default"
        );
    }

    #[test]
    fn unready_crng_waits_a_bounded_time() {
        let system = FakeSystem::new();
        system.set_crng(false, false);
        system.set_file(HW_RNG_CURRENT_PATH, "none\n");
        let report = check_entropy(&system, "random.trust_cpu=off", 3_000);
        assert_eq!(report.crng, CrngState::NotReady { waited_ms: 3_000 });
        assert!(system.calls().contains(&Call::WaitForCrng(3_000)));
        assert_eq!(report.hw_rng, None);
        assert_eq!(report.trust_cpu, Some(false));
        assert!(
            report
                .summary()
                .starts_with("crng=not-ready waited_ms=3000 rdrand=no")
        );
    }

    #[test]
    fn crng_that_becomes_ready_reports_the_wait() {
        let system = FakeSystem::new();
        system.set_crng(false, true);
        let report = check_entropy(&system, "", CRNG_WAIT_MAX_MS);
        assert_eq!(report.crng, CrngState::ReadyAfterWait { waited_ms: 1 });
    }

    #[test]
    fn report_is_printed_and_recorded() {
        let system = FakeSystem::new();
        let report = check_entropy(&system, "random.trust_cpu=on", CRNG_WAIT_MAX_MS);
        record(&system, &report);
        assert!(system.console_lines()[0].starts_with("init: entropy crng=ready"));
        let file = String::from_utf8(system.file(ENTROPY_RECORD_PATH).unwrap()).unwrap();
        assert!(file.contains("trust_cpu=on\n"));
        assert!(file.contains("hwrng=none\n"));
    }
}
