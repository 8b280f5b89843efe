//! Reads a guest's serial console log: the boot phases that init and the supervisor print
//! (`init: <phase> boottime_ms=N`, `supervisor: all services ready boottime_ms=N`), the
//! kernel's own timestamps, and any sign of a panic. Pure text parsing.

/// One named moment of the boot, in guest milliseconds since the kernel started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    /// `init:start`, `init:modules_done`, `supervisor:ready`, ...
    pub name: String,
    /// `CLOCK_BOOTTIME` in milliseconds.
    pub boottime_ms: u64,
}

/// The phases in log order.
pub fn phases(log: &str) -> Vec<Phase> {
    let mut out = Vec::new();
    for line in log.lines() {
        let Some((head, ms)) = line.rsplit_once("boottime_ms=") else {
            continue;
        };
        let digits: String = ms.chars().take_while(char::is_ascii_digit).collect();
        let Ok(boottime_ms) = digits.parse() else {
            continue;
        };
        let head = head.trim();
        let name = if let Some(rest) = head.strip_prefix("init: ") {
            format!("init:{}", rest.split_whitespace().next().unwrap_or(""))
        } else if head.starts_with("supervisor: all services ready") {
            "supervisor:ready".to_string()
        } else {
            continue;
        };
        out.push(Phase { name, boottime_ms });
    }
    out
}

/// The time of the first phase called `name`.
pub fn phase_ms(phases: &[Phase], name: &str) -> Option<u64> {
    phases
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.boottime_ms)
}

/// The kernel timestamp (ms) of the first line containing `needle`, e.g. `Run /init`.
pub fn kernel_ms(log: &str, needle: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let inner = line
        .trim_start()
        .strip_prefix('[')?
        .split(']')
        .next()?
        .trim();
    let seconds: f64 = inner.parse().ok()?;
    Some((seconds * 1000.0) as u64)
}

/// The first line that shows a kernel or Rust panic, an oops or a BUG.
pub fn first_panic(log: &str) -> Option<&str> {
    const SIGNS: &[&str] = &[
        "Kernel panic",
        "panicked at",
        "BUG:",
        "Oops:",
        "general protection fault",
    ];
    log.lines().find(|l| SIGNS.iter().any(|s| l.contains(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[    0.000000] Linux version 6.12.117+deb13-cloud-amd64\n\
[    0.000000] Kernel command line: console=ttyS0 panic=-1\n\
[    9.229612] Run /init as init process\n\
init: start boottime_ms=10057\n\
init: mounts_done boottime_ms=10190\n\
 INFO kernel modules listed=21 failed=1\n\
init: supervisor_start boottime_ms=14161\n\
supervisor: all services ready boottime_ms=14900\n";

    #[test]
    fn phases_come_out_in_order() {
        let p = phases(LOG);
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "init:start",
                "init:mounts_done",
                "init:supervisor_start",
                "supervisor:ready"
            ]
        );
        assert_eq!(phase_ms(&p, "supervisor:ready"), Some(14_900));
        assert_eq!(kernel_ms(LOG, "Run /init"), Some(9_229));
    }

    #[test]
    fn panic_on_the_command_line_is_not_a_panic() {
        assert_eq!(first_panic(LOG), None);
        let bad = format!("{LOG}[   15.1] Kernel panic - not syncing: Attempted to kill init!\n");
        assert!(
            first_panic(&bad)
                .unwrap()
                .contains("Attempted to kill init")
        );
        assert!(first_panic("thread 'main' panicked at src/main.rs:1:1").is_some());
    }
}
