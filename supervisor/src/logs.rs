//! Service log capture: splitting a byte stream into lines ([`LineSplitter`]) and keeping the
//! last lines of each service in a bounded ring ([`LogRing`]).
//!
//! Over-long lines are split, never dropped; invalid UTF-8 is replaced, never fatal. This module
//! must never grow without bound: every buffer here has a fixed cap.

#![forbid(unsafe_code)]

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Longest line kept as one entry; longer ones are split into several entries.
pub const LOG_LINE_MAX_BYTES: usize = 4096;

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The service's standard output.
    Stdout,
    /// The service's standard error.
    Stderr,
}

/// One captured line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Wall-clock time it was read, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// stdout or stderr.
    pub stream: Stream,
    /// The text, with invalid UTF-8 replaced by U+FFFD and no trailing newline.
    pub text: String,
}

/// Cuts a byte stream into lines of at most [`LOG_LINE_MAX_BYTES`].
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; calls `emit` for every complete line (or full-length piece of a long line).
    pub fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(String)) {
        while !bytes.is_empty() {
            let room = LOG_LINE_MAX_BYTES - self.pending.len();
            let window = &bytes[..bytes.len().min(room)];
            if let Some(newline) = window.iter().position(|b| *b == b'\n') {
                self.pending.extend_from_slice(&window[..newline]);
                emit(self.take(self.pending.len()));
                bytes = &bytes[newline + 1..];
            } else {
                self.pending.extend_from_slice(window);
                bytes = &bytes[window.len()..];
                if self.pending.len() == LOG_LINE_MAX_BYTES {
                    let cut = utf8_safe_cut(&self.pending);
                    emit(self.take(cut));
                }
            }
        }
    }

    /// Emits what is left when the stream ends.
    pub fn finish(&mut self, mut emit: impl FnMut(String)) {
        if !self.pending.is_empty() {
            emit(self.take(self.pending.len()));
        }
    }

    /// Removes the first `len` pending bytes as text.
    fn take(&mut self, len: usize) -> String {
        let mut line: Vec<u8> = self.pending.drain(..len).collect();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        match String::from_utf8(line) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

/// Where to cut a full buffer so that a UTF-8 character is not split (at most 3 bytes back).
fn utf8_safe_cut(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=3.min(len) {
        let b = bytes[len - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: keep looking for the lead byte
        }
        if b >= 0xC0 {
            let needed = if b >= 0xF0 {
                4
            } else if b >= 0xE0 {
                3
            } else {
                2
            };
            if needed > back {
                return len - back; // the character is incomplete: leave it for the next piece
            }
        }
        break;
    }
    len
}

/// The last `capacity` lines of one service.
#[derive(Debug)]
pub struct LogRing {
    capacity: usize,
    lines: VecDeque<LogLine>,
}

impl LogRing {
    /// A ring holding at most `capacity` lines (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            lines: VecDeque::new(),
        }
    }

    /// Adds a line, dropping the oldest when full.
    pub fn push(&mut self, line: LogLine) {
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// The last `count` lines, oldest first.
    pub fn tail(&self, count: usize) -> Vec<LogLine> {
        let skip = self.lines.len().saturating_sub(count);
        self.lines.iter().skip(skip).cloned().collect()
    }

    /// Lines held now.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether no line is held.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.feed(chunk, |l| out.push(l));
        }
        splitter.finish(|l| out.push(l));
        out
    }

    #[test]
    fn lines_across_chunks() {
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\r\n\nlast"]),
            ["hello", "world", "", "last"]
        );
    }

    #[test]
    fn long_line_is_split_not_dropped() {
        let long = vec![b'x'; LOG_LINE_MAX_BYTES * 2 + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let got = split(&[&input]);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].len(), LOG_LINE_MAX_BYTES);
        assert_eq!(got[2].len(), 10);
        assert_eq!(got.concat().len(), long.len());
    }

    #[test]
    fn split_keeps_multibyte_characters_whole() {
        // 4095 ASCII bytes then a 2-byte character: the cut must come before the character.
        let mut input = vec![b'a'; LOG_LINE_MAX_BYTES - 1];
        input.extend_from_slice("é".as_bytes());
        let got = split(&[&input]);
        assert_eq!(
            got,
            [String::from_utf8(vec![b'a'; 4095]).unwrap(), "é".into()]
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(
            split(&[b"ok \xff\xfe bytes\n"]),
            ["ok \u{fffd}\u{fffd} bytes"]
        );
    }

    #[test]
    fn ring_keeps_the_newest() {
        let mut ring = LogRing::new(3);
        for i in 0..5 {
            ring.push(LogLine {
                at_ms: i,
                stream: Stream::Stdout,
                text: i.to_string(),
            });
        }
        assert_eq!(ring.len(), 3);
        let texts: Vec<String> = ring.tail(10).into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["2", "3", "4"]);
        assert_eq!(ring.tail(1)[0].text, "4");
    }
}
