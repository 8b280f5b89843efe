//! Memory-maps a model read-only, so weights are read in place, not copied at load, and a
//! model larger than RAM still loads: the kernel pages it in on demand.
//!
//! In the image the model is a dm-verity block device (`/dev/mapper/NAME`): every 4 KiB
//! page is checked against the root hash as it is read, and a page that fails reads as
//! EIO, which a memory access turns into SIGBUS. A SIGBUS inside a mapped model ends the
//! process at once with a clear message on stderr and exit code
//! [`MODEL_READ_FAILED_EXIT_CODE`]: no panic, and nothing computed from the bad page is
//! ever answered. A SIGBUS anywhere else keeps its default action.
//!
//! The one place in the crate that needs `unsafe` for file access. It must never map a file
//! writable or hand out a mutable view.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The exit code when a page of the model could not be read (EX_DATAERR).
pub const MODEL_READ_FAILED_EXIT_CODE: i32 = 65;
/// What the process prints before it exits on such a page.
pub const MODEL_READ_FAILED_MESSAGE: &str = "model-runner: FATAL: a page of the model could not \
be read (I/O error). On a model disk this means its blocks do not match the root hash on the \
kernel command line: the disk was changed or is failing. Refusing to serve from it.\n";

/// How many mappings the guard watches at once.
const GUARDED_MAX: usize = 4;
/// The guarded ranges: start address and length, 0 for a free slot.
static GUARDED: [(AtomicUsize, AtomicUsize); GUARDED_MAX] = [
    (AtomicUsize::new(0), AtomicUsize::new(0)),
    (AtomicUsize::new(0), AtomicUsize::new(0)),
    (AtomicUsize::new(0), AtomicUsize::new(0)),
    (AtomicUsize::new(0), AtomicUsize::new(0)),
];
static INSTALL: Once = Once::new();

/// Whether `address` lies in a guarded mapping. Async-signal-safe: atomics only.
fn is_guarded(address: usize) -> bool {
    GUARDED.iter().any(|(start, len)| {
        let start = start.load(Ordering::Acquire);
        let len = len.load(Ordering::Acquire);
        len != 0 && address >= start && address - start < len
    })
}

type SigactionHandler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a handler installed with SA_SIGINFO;
    // `si_addr` is the faulting address for SIGBUS.
    let address = unsafe { (*info).si_addr() } as usize;
    if is_guarded(address) {
        let message = MODEL_READ_FAILED_MESSAGE.as_bytes();
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is a static str.
        unsafe {
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::_exit(MODEL_READ_FAILED_EXIT_CODE);
        }
    }
    // Not ours: restore the default action; returning re-runs the access, which faults
    // again and ends the process as SIGBUS always has.
    // SAFETY: signal(2) with SIG_DFL is async-signal-safe.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

fn install_guard() -> io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; we fill in the handler, flags and an empty
        // mask before passing it to sigaction(2), which only reads it.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            let handler: SigactionHandler = on_sigbus;
            action.sa_sigaction = handler as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
                result = Err(io::Error::last_os_error());
            }
        }
    });
    result
}

fn guard(start: usize, len: usize) -> io::Result<usize> {
    install_guard()?;
    for (slot, (s, l)) in GUARDED.iter().enumerate() {
        // A slot is taken by its start (never 0 for a mapping); its length, stored after,
        // turns the guard on.
        if s.compare_exchange(0, start, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            l.store(len, Ordering::Release);
            return Ok(slot);
        }
    }
    Err(io::Error::other("too many models mapped at once"))
}

/// A read-only view of a whole file, or of the first `len` bytes of a block device.
#[derive(Debug)]
pub struct MappedFile {
    map: memmap2::Mmap,
    slot: Option<usize>,
}

impl MappedFile {
    /// Maps `path` read-only: the whole file, or `len` bytes of it. A block device (whose
    /// `fstat` size is 0) needs `len`: the model's size, which the image passes as
    /// `--model-bytes` from the same build that put it on the command line.
    pub fn open(path: &Path, len: Option<u64>) -> io::Result<MappedFile> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let len = match (len, meta.file_type().is_block_device()) {
            (Some(0), _) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a model of 0 bytes",
                ));
            }
            (Some(len), false) if len > meta.len() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the file has {} bytes, fewer than the {len} asked for",
                        meta.len()
                    ),
                ));
            }
            (Some(len), _) => len,
            (None, true) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a block device needs the model's size (--model-bytes)",
                ));
            }
            (None, false) => meta.len(),
        };
        let len = usize::try_from(len).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a model over the address space",
            )
        })?;
        // SAFETY: the map is read-only and private to this process. Model files are
        // installed read-only (on a dm-verity disk, or a file the operator names) and never
        // rewritten while served; a concurrent truncation, or a page that fails to read
        // (EIO on a tampered dm-verity block), raises SIGBUS, which the guard below turns
        // into a clean exit with a message.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(&file)? };
        let slot = guard(map.as_ptr() as usize, map.len())?;
        Ok(MappedFile {
            map,
            slot: Some(slot),
        })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            GUARDED[slot].1.store(0, Ordering::Release);
            GUARDED[slot].0.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_file_is_mapped_whole_or_to_the_length_asked_and_guarded() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[7u8; 10_000]).unwrap();
        let whole = MappedFile::open(f.path(), None).unwrap();
        assert_eq!(whole.bytes().len(), 10_000);
        let part = MappedFile::open(f.path(), Some(4096)).unwrap();
        assert_eq!(part.bytes(), &[7u8; 4096][..]);
        let address = part.bytes().as_ptr() as usize;
        assert!(is_guarded(address + 4095));
        assert!(!is_guarded(address + 4096 + (1 << 30)));
        drop(part);
        assert!(!is_guarded(address));
        assert!(MappedFile::open(f.path(), Some(10_001)).is_err());
        assert!(MappedFile::open(f.path(), Some(0)).is_err());
    }

    /// Reading past the end of a mapped file raises SIGBUS, as a page that dm-verity
    /// refuses does: the guard ends the process with the message and exit code. Runs the
    /// fault in a child process (this test binary, re-run on one test).
    #[test]
    fn a_bad_page_ends_the_process_with_the_message_not_a_crash() {
        if std::env::var_os("CLOISTER_SIGBUS_CHILD").is_some() {
            let f = tempfile::NamedTempFile::new().unwrap();
            f.as_file().set_len(8192).unwrap();
            let map = MappedFile::open(f.path(), None).unwrap();
            // Shrink the file under the map: its second page now faults.
            f.as_file().set_len(0).unwrap();
            let byte = std::hint::black_box(map.bytes())[4096];
            println!("read {byte}: the guard did not fire");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "mmap::tests::a_bad_page_ends_the_process_with_the_message_not_a_crash",
                "--nocapture",
            ])
            .env("CLOISTER_SIGBUS_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(MODEL_READ_FAILED_EXIT_CODE),
            "{stderr}"
        );
        assert!(
            stderr.contains(MODEL_READ_FAILED_MESSAGE.trim_end()),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
