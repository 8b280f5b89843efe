//! Service manifests: one TOML file per service in a folder, parsed into [`ServiceManifest`].
//!
//! A bad manifest yields a [`ManifestError`] naming the file, the line and the field; it never
//! stops the other manifests from loading. This module only parses and checks text: it must
//! never touch processes, users or the file system beyond reading the manifest folder.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::RestartPolicy;

/// Default delay before the first automatic restart (systemd's `RestartSec` default).
pub const RESTART_DELAY_DEFAULT_MS: u64 = 100;
/// Default cap on the exponentially growing restart delay.
pub const RESTART_DELAY_MAX_DEFAULT_MS: u64 = 30_000;
/// Default start limit: this many starts ...
pub const START_LIMIT_BURST_DEFAULT: u32 = 5;
/// ... within this interval, then the service is marked failed (systemd's defaults).
pub const START_LIMIT_INTERVAL_DEFAULT_MS: u64 = 10_000;
/// Default time a `notify` service has to send READY=1.
pub const START_TIMEOUT_DEFAULT_MS: u64 = 30_000;
/// Default time between the stop signal and SIGKILL.
pub const STOP_TIMEOUT_DEFAULT_MS: u64 = 10_000;
/// Default number of log lines kept per service.
pub const LOG_BUFFER_LINES_DEFAULT: usize = 1_000;
/// Longest accepted service name (it becomes a socket and cgroup name).
pub const SERVICE_NAME_MAX_BYTES: usize = 64;

/// How the supervisor learns that a service is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Readiness {
    /// Ready once the program has been executed (systemd's `Type=exec`).
    Exec,
    /// Ready when the service sends `READY=1` on `$NOTIFY_SOCKET` (systemd's `Type=notify`).
    Notify,
}

/// What happens when the start limit is hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartLimitAction {
    /// The service stays failed; the others keep running.
    None,
    /// The whole box powers off (for services the appliance cannot live without).
    Poweroff,
}

/// Where the notify socket lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifySocketKind {
    /// A socket file under the runtime folder.
    Path,
    /// A Linux abstract socket (`NOTIFY_SOCKET=@...`).
    Abstract,
}

/// A signal given by name (`SIGTERM`, `TERM`) or number in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalNumber(pub i32);

const SIGNAL_NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

impl SignalNumber {
    /// Parses `SIGTERM`, `TERM` or `15`.
    pub fn parse(text: &str) -> Option<Self> {
        if let Ok(number) = text.parse::<i32>() {
            return (1..=64).contains(&number).then_some(Self(number));
        }
        let upper = text.to_ascii_uppercase();
        let short = upper.strip_prefix("SIG").unwrap_or(&upper);
        SIGNAL_NAMES
            .iter()
            .find(|(name, _)| *name == short)
            .map(|(_, number)| Self(*number))
    }

    /// `SIGTERM` for 15, `SIG42` for a signal without a name.
    pub fn name(self) -> String {
        SIGNAL_NAMES
            .iter()
            .find(|(_, number)| *number == self.0)
            .map_or_else(
                || format!("SIG{}", self.0),
                |(name, _)| format!("SIG{name}"),
            )
    }
}

impl<'de> Deserialize<'de> for SignalNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Name(String),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Number(n) => n.to_string(),
            Raw::Name(s) => s,
        };
        Self::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown signal `{text}`; use a name such as SIGTERM or a number 1-64"
            ))
        })
    }
}

/// A size in bytes, written as an integer or as a string with a K, M or G suffix (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `1048576`, `512K`, `64M` or `2G`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (digits, multiplier) = match text.char_indices().last()? {
            (i, 'K' | 'k') => (&text[..i], 1u64 << 10),
            (i, 'M' | 'm') => (&text[..i], 1 << 20),
            (i, 'G' | 'g') => (&text[..i], 1 << 30),
            _ => (text, 1),
        };
        digits
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
            .filter(|n| *n > 0)
            .map(Self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(s) => s,
        };
        Self::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid size `{text}`; use bytes or a number with K, M or G"
            ))
        })
    }
}

/// One service, as its manifest describes it. The name is the file name without `.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceManifest {
    /// The service's name: the manifest's file name without `.toml`.
    #[serde(skip)]
    pub name: String,
    /// The manifest file it came from.
    #[serde(skip)]
    pub file: PathBuf,
    /// The program: an absolute path, or a name looked up in `PATH`.
    pub command: String,
    /// Arguments after the program name.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables; the service starts from a clean environment plus these.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Working directory (default `/`).
    pub working_directory: Option<PathBuf>,
    /// User to run as (name from /etc/passwd or a number).
    pub user: Option<String>,
    /// Group to run as (default: the user's primary group).
    pub group: Option<String>,
    /// Services this one starts after, once they are ready or have settled (ordering only).
    #[serde(default)]
    pub after: Vec<String>,
    /// Services this one needs: it starts only once each is ready, and fails if one fails.
    #[serde(default)]
    pub requires: Vec<String>,
    /// `exec` (ready once started) or `notify` (ready on READY=1).
    #[serde(default = "default_readiness")]
    pub ready: Readiness,
    /// `no`, `on-success`, `on-failure`, `on-abnormal`, `on-watchdog`, `on-abort` or `always`.
    #[serde(default = "default_restart")]
    pub restart: RestartPolicy,
    /// Delay before the first automatic restart; it doubles on each further one.
    #[serde(default = "default_restart_delay_ms")]
    pub restart_delay_ms: u64,
    /// Cap on the restart delay.
    #[serde(default = "default_restart_delay_max_ms")]
    pub restart_delay_max_ms: u64,
    /// Starts allowed within `start_limit_interval_ms`.
    #[serde(default = "default_start_limit_burst")]
    pub start_limit_burst: u32,
    /// The start limit's window; 0 turns the limit off.
    #[serde(default = "default_start_limit_interval_ms")]
    pub start_limit_interval_ms: u64,
    /// What happens when the start limit is hit: `none` or `poweroff`.
    #[serde(default = "default_start_limit_action")]
    pub start_limit_action: StartLimitAction,
    /// Time a `notify` service has to send READY=1; 0 waits forever.
    #[serde(default = "default_start_timeout_ms")]
    pub start_timeout_ms: u64,
    /// Watchdog interval: a service silent for this long gets SIGABRT. 0 or absent: off.
    #[serde(default)]
    pub watchdog_ms: u64,
    /// Signal that asks the service to stop.
    #[serde(default = "default_stop_signal")]
    pub stop_signal: SignalNumber,
    /// Time between the stop signal (or the watchdog's SIGABRT) and SIGKILL.
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: u64,
    /// RLIMIT_NOFILE (soft and hard) for the service.
    pub limit_nofile: Option<u64>,
    /// Memory limit, applied through cgroup v2 `memory.max` where the controller is available.
    pub memory_max: Option<ByteSize>,
    /// `path` (default) or `abstract`.
    #[serde(default = "default_notify_socket")]
    pub notify_socket: NotifySocketKind,
    /// Log lines kept in memory for this service.
    #[serde(default = "default_log_buffer_lines")]
    pub log_buffer_lines: usize,
}

fn default_readiness() -> Readiness {
    Readiness::Exec
}
fn default_restart() -> RestartPolicy {
    RestartPolicy::OnFailure
}
fn default_restart_delay_ms() -> u64 {
    RESTART_DELAY_DEFAULT_MS
}
fn default_restart_delay_max_ms() -> u64 {
    RESTART_DELAY_MAX_DEFAULT_MS
}
fn default_start_limit_burst() -> u32 {
    START_LIMIT_BURST_DEFAULT
}
fn default_start_limit_interval_ms() -> u64 {
    START_LIMIT_INTERVAL_DEFAULT_MS
}
fn default_start_limit_action() -> StartLimitAction {
    StartLimitAction::None
}
fn default_start_timeout_ms() -> u64 {
    START_TIMEOUT_DEFAULT_MS
}
fn default_stop_signal() -> SignalNumber {
    SignalNumber(libc::SIGTERM)
}
fn default_stop_timeout_ms() -> u64 {
    STOP_TIMEOUT_DEFAULT_MS
}
fn default_notify_socket() -> NotifySocketKind {
    NotifySocketKind::Path
}
fn default_log_buffer_lines() -> usize {
    LOG_BUFFER_LINES_DEFAULT
}

/// A manifest that could not be used, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// 1-based line of the problem, when known.
    pub line: Option<usize>,
    /// The field at fault, when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Checks a service name: letters, digits, `-`, `_`, `.` and `@`, at most 64 bytes.
pub fn is_valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= SERVICE_NAME_MAX_BYTES
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

impl ServiceManifest {
    /// Parses one manifest's text. `file` names it in errors; its stem is the service name.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ManifestError> {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let error = |line: Option<usize>, field: Option<&str>, message: String| ManifestError {
            file: file.to_owned(),
            line,
            field: field.map(str::to_owned),
            message,
        };
        if !is_valid_service_name(&name) {
            return Err(error(
                None,
                None,
                "the file name is not a valid service name (letters, digits, - _ . @)".into(),
            ));
        }
        let mut manifest: Self = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| line_of(text, span.start));
            let field = field_in_message(e.message())
                .or_else(|| e.span().and_then(|span| key_on_line(text, span.start)));
            error(line, field.as_deref(), e.message().trim().to_owned())
        })?;
        manifest.name = name;
        manifest.file = file.to_owned();
        manifest
            .check()
            .map_err(|(field, message)| error(field_line(text, field), Some(field), message))?;
        Ok(manifest)
    }

    /// Checks what the types alone cannot: returns the field at fault and why.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.command.trim().is_empty() {
            return Err(("command", "must not be empty".into()));
        }
        for (field, names) in [("after", &self.after), ("requires", &self.requires)] {
            if let Some(bad) = names.iter().find(|n| !is_valid_service_name(n)) {
                return Err((field, format!("`{bad}` is not a valid service name")));
            }
            if names.contains(&self.name) {
                return Err((field, "a service cannot depend on itself".into()));
            }
        }
        if let Some(key) = self
            .environment
            .keys()
            .find(|k| k.is_empty() || k.contains(['=', '\0']))
        {
            return Err((
                "environment",
                format!("`{key}` is not a valid variable name"),
            ));
        }
        if self.restart_delay_max_ms < self.restart_delay_ms {
            return Err((
                "restart_delay_max_ms",
                "must be at least restart_delay_ms".into(),
            ));
        }
        if self.log_buffer_lines == 0 {
            return Err(("log_buffer_lines", "must be at least 1".into()));
        }
        if self.limit_nofile == Some(0) {
            return Err(("limit_nofile", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// 1-based line number of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The key assigned on the line holding byte `offset` (`key = value`), if any.
fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| key.to_owned())
}

/// The line where `field` is assigned, if it appears as `field = ...`.
fn field_line(text: &str, field: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.split_once('=')
                .is_some_and(|(key, _)| key.trim() == field)
                || line.trim() == format!("[{field}]")
        })
        .map(|i| i + 1)
}

/// The field a serde message names (`missing field `command``, `unknown field `x``).
fn field_in_message(message: &str) -> Option<String> {
    for prefix in ["missing field `", "unknown field `", "duplicate key `"] {
        if let Some(rest) = message.split(prefix).nth(1) {
            return rest.split('`').next().map(str::to_owned);
        }
    }
    None
}

/// The result of loading a manifest folder: the services that parsed, and the errors of the rest.
#[derive(Debug, Default)]
pub struct LoadedManifests {
    /// Good manifests, sorted by name.
    pub services: Vec<ServiceManifest>,
    /// One error per bad manifest file.
    pub errors: Vec<ManifestError>,
}

/// Loads every `*.toml` file in `dir`. A folder that cannot be read is one error.
pub fn load_dir(dir: &Path) -> LoadedManifests {
    let mut loaded = LoadedManifests::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            loaded.errors.push(ManifestError {
                file: dir.to_owned(),
                line: None,
                field: None,
                message: format!("cannot read the manifest folder: {e}"),
            });
            return loaded;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    for file in files {
        let parsed = std::fs::read_to_string(&file)
            .map_err(|e| ManifestError {
                file: file.clone(),
                line: None,
                field: None,
                message: format!("cannot read: {e}"),
            })
            .and_then(|text| ServiceManifest::parse(&file, &text));
        match parsed {
            Ok(manifest) => loaded.services.push(manifest),
            Err(e) => loaded.errors.push(e),
        }
    }
    loaded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Result<ServiceManifest, ManifestError> {
        ServiceManifest::parse(
            Path::new(&format!("/etc/cloister/services/{name}.toml")),
            text,
        )
    }

    #[test]
    fn full_manifest_parses_with_every_field() {
        let m = parse(
            "web-ui",
            r#"
command = "/usr/bin/web-ui"
args = ["--port", "8443"]
environment = { RUST_LOG = "info" }
working_directory = "/var/lib/web-ui"
user = "nobody"
group = "nogroup"
after = ["network"]
requires = ["model-runner"]
ready = "notify"
restart = "on-abnormal"
restart_delay_ms = 50
restart_delay_max_ms = 5000
start_limit_burst = 3
start_limit_interval_ms = 60000
start_limit_action = "poweroff"
start_timeout_ms = 2000
watchdog_ms = 1000
stop_signal = "SIGINT"
stop_timeout_ms = 3000
limit_nofile = 4096
memory_max = "512M"
notify_socket = "abstract"
log_buffer_lines = 200
"#,
        )
        .unwrap();
        assert_eq!(m.name, "web-ui");
        assert_eq!(m.args, ["--port", "8443"]);
        assert_eq!(m.environment["RUST_LOG"], "info");
        assert_eq!(m.requires, ["model-runner"]);
        assert_eq!(m.ready, Readiness::Notify);
        assert_eq!(m.restart, RestartPolicy::OnAbnormal);
        assert_eq!(m.start_limit_action, StartLimitAction::Poweroff);
        assert_eq!(m.stop_signal, SignalNumber(libc::SIGINT));
        assert_eq!(m.memory_max, Some(ByteSize(512 << 20)));
        assert_eq!(m.notify_socket, NotifySocketKind::Abstract);
        assert_eq!(m.limit_nofile, Some(4096));
    }

    #[test]
    fn defaults_follow_systemd() {
        let m = parse("x", "command = \"/bin/true\"\n").unwrap();
        assert_eq!(m.ready, Readiness::Exec);
        assert_eq!(m.restart_delay_ms, RESTART_DELAY_DEFAULT_MS);
        assert_eq!(m.start_limit_burst, 5);
        assert_eq!(m.start_limit_interval_ms, 10_000);
        assert_eq!(m.stop_signal, SignalNumber(libc::SIGTERM));
        assert_eq!(m.watchdog_ms, 0);
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let e = parse("a", "command = \"/bin/true\"\nargs = [\n\nrestart = \n").unwrap_err();
        assert!(e.file.ends_with("a.toml"));
        assert!(e.line.is_some_and(|l| l >= 2), "{e}");
        assert!(e.to_string().starts_with("/etc/cloister/services/a.toml:"));
    }

    #[test]
    fn bad_value_names_line_and_field() {
        let e = parse("a", "command = \"/bin/true\"\n\nrestart = \"sometimes\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.field.as_deref(), Some("restart"), "{e}");
        assert!(e.message.contains("sometimes"), "{e}");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse("a", "command = \"/bin/true\"\nrestrat = \"no\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("restrat"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn missing_command_is_named() {
        let e = parse("a", "args = []\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("command"), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_signal_are_named() {
        let e = parse("a", "command = \"x\"\nstop_timeout_ms = \"soon\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(2), Some("stop_timeout_ms")),
            "{e}"
        );
        let e = parse("a", "command = \"x\"\nstop_signal = \"SIGFOO\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(2), Some("stop_signal")),
            "{e}"
        );
        let e = parse("a", "command = \"x\"\nmemory_max = \"lots\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("memory_max"), "{e}");
    }

    #[test]
    fn semantic_errors_are_named() {
        let e = parse("a", "command = \"x\"\nrequires = [\"a\"]\n").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("requires")));
        let e = parse("a", "command = \"  \"\n").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(1), Some("command")));
        let e = parse(
            "a",
            "command = \"x\"\nrestart_delay_ms = 10\nrestart_delay_max_ms = 5\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(3), Some("restart_delay_max_ms"))
        );
        let e = parse("bad name", "command = \"x\"\n").unwrap_err();
        assert!(e.message.contains("service name"));
    }

    #[test]
    fn signals_and_sizes_parse() {
        assert_eq!(
            SignalNumber::parse("TERM"),
            Some(SignalNumber(libc::SIGTERM))
        );
        assert_eq!(SignalNumber::parse("sigkill"), Some(SignalNumber(9)));
        assert_eq!(SignalNumber::parse("0"), None);
        assert_eq!(SignalNumber(libc::SIGABRT).name(), "SIGABRT");
        assert_eq!(ByteSize::parse("2G"), Some(ByteSize(2 << 30)));
        assert_eq!(ByteSize::parse("100"), Some(ByteSize(100)));
        assert_eq!(ByteSize::parse("M"), None);
        assert_eq!(ByteSize::parse("99999999999999999999G"), None);
    }

    #[test]
    fn load_dir_keeps_good_and_reports_bad() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.toml"), "command = \"/bin/true\"\n").unwrap();
        std::fs::write(dir.path().join("bad.toml"), "command = 3\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        let loaded = load_dir(dir.path());
        assert_eq!(loaded.services.len(), 1);
        assert_eq!(loaded.services[0].name, "good");
        assert_eq!(loaded.errors.len(), 1);
        assert_eq!(loaded.errors[0].field.as_deref(), Some("command"));
    }
}
