//! Starting the browser tests: whether Chromium, node and playwright-core are here (the
//! test says SKIPPED and passes without them, unless `CLOISTER_REQUIRE_BROWSER=1`, as CI
//! sets, makes that a failure), and running one of the `tests/browser/*.mjs` scripts with
//! node against a server the test started, failing on any FAIL line it prints.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `web-ui/tests/browser`: the scripts, and `node_modules` after `npm ci`.
pub fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Why the browser tests cannot run on this machine, or `None` when they can: Chromium
/// (`CHROMIUM`, else `/usr/bin/chromium`), playwright-core installed by `npm ci`, node.
pub fn missing_dependencies() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} is missing"));
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Some("run `npm ci` in web-ui/tests/browser".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is missing".into());
    }
    None
}

/// Whether the browser test may run: false (after saying SKIPPED and why) when `missing`,
/// or anything [`missing_dependencies`] finds, is missing; a failure instead when
/// `CLOISTER_REQUIRE_BROWSER=1`. `missing` is the test's own extra requirement.
pub fn may_run(what: &str, missing: Option<String>) -> bool {
    let Some(reason) = missing_dependencies().or(missing) else {
        return true;
    };
    assert!(
        std::env::var("CLOISTER_REQUIRE_BROWSER").as_deref() != Ok("1"),
        "{what} dependencies missing: {reason}"
    );
    eprintln!("SKIPPED: {reason}");
    false
}

/// Runs `node tests/browser/<script>` with `env` to completion, prints what it said, and
/// fails (naming `what`) unless it exits 0 with no line starting with FAIL. Returns its
/// stdout for the caller's own checks. Blocks: async tests call it on the blocking pool.
pub fn run_script(what: &str, script: &str, env: &[(&str, &str)]) -> String {
    let output = Command::new("node")
        .arg(browser_dir().join(script))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{what} failed:\n{stdout}");
    assert!(
        !stdout.lines().any(|line| line.starts_with("FAIL")),
        "{what} failed:\n{stdout}"
    );
    stdout
}
