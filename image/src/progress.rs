//! Progress display for the long steps of a build (downloads, compilation, compression):
//! a bar on a terminal, plain `==> ` lines otherwise (CI logs). It writes to stderr only
//! and must never print file contents, keys or anything from inside the image.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes: a terminal (bars) or plain lines.
#[derive(Debug, Clone)]
pub struct Progress {
    terminal: bool,
    quiet: bool,
    start: Instant,
}

impl Progress {
    /// Progress on stderr, with bars when stderr is a terminal.
    pub fn stderr() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            quiet: false,
            start: Instant::now(),
        }
    }

    /// No output at all (tests).
    pub fn quiet() -> Self {
        Self {
            terminal: false,
            quiet: true,
            start: Instant::now(),
        }
    }

    /// Whether nothing is shown (tool output is then captured, not passed through).
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Where a tool's own progress output (apt-get, pip) goes: our stderr, or nowhere.
    pub fn tool_output(&self) -> std::process::Stdio {
        if self.quiet {
            std::process::Stdio::null()
        } else {
            std::io::stderr().into()
        }
    }

    /// One step, as a line with the time since the start.
    pub fn step(&self, what: &str) {
        if !self.quiet {
            eprintln!("==> [{:6.1}s] {what}", self.start.elapsed().as_secs_f64());
        }
    }

    /// A bar over `total` bytes; on no terminal, a line at start and at end.
    pub fn bytes(&self, what: &str, total: u64) -> ByteProgress {
        self.step(what);
        let bar = if self.terminal && !self.quiet {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("    {bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
            {
                bar.set_style(style);
            }
            Some(bar)
        } else {
            None
        };
        ByteProgress { bar }
    }
}

/// A running byte count; dropping it clears the bar.
#[derive(Debug)]
pub struct ByteProgress {
    bar: Option<ProgressBar>,
}

impl ByteProgress {
    /// Adds `n` bytes done.
    pub fn advance(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }
}

impl Drop for ByteProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
