//! Builds the Cloister image (kernel, initramfs, command line, manifest) bit for bit
//! reproducibly from the pinned inputs in `image/lock.toml`, and boots it under QEMU.
//!
//! - [`lock`]: the pinned inputs and digest checks;
//! - [`fetch`]: downloads through a private apt configuration and pip, cached by digest;
//! - [`modules`]: which kernel modules, in which load order;
//! - [`cpio`]: our own newc writer, with fixed metadata;
//! - [`build`]: the whole build and its manifest, and `--check`;
//! - [`expected`]: the measurements a booted image should show, for `cloister run`;
//! - [`qemu`]: the QEMU command lines (TCG, KVM, TDX) and the host probes.
//! - [`verity`]: model disks, each a GGUF file and its dm-verity hash tree.
//! - [`vsock`]: the host's end of the host channel (readiness, status, poweroff).
//!
//! It must never read a mirror host from anywhere but the machine's apt configuration,
//! and never let the building machine's time, umask, folder or cargo home reach an output.

#![deny(unsafe_code)]

pub mod build;
pub mod cpio;
pub mod expected;
pub mod fetch;
pub mod host;
pub mod lock;
pub mod modules;
pub mod progress;
pub mod qemu;
pub mod verity;
pub mod vsock;

/// Everything that can stop a build, a check or a boot.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file or folder operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The lock file is malformed.
    #[error("the lock file {path} is invalid: {reason}")]
    BadLock {
        /// Its path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A downloaded or cached input does not have its pinned digest.
    #[error("{input}: sha256 mismatch: the lock pins {expected}, the download has {actual}")]
    DigestMismatch {
        /// The input, by name and version.
        input: String,
        /// Digest in the lock.
        expected: String,
        /// Digest of the bytes received.
        actual: String,
    },
    /// The pinned version is no longer offered by the archive.
    #[error(
        "{package} {version} is no longer in the archive. Update image/lock.toml: run \
         image/scripts/update-lock.sh, which prints the current version and sha256 of each \
         pinned package, copy them into the lock, and commit (the image's measurements change)"
    )]
    VersionGone {
        /// Package name.
        package: String,
        /// Pinned version.
        version: String,
    },
    /// A download failed for another reason (network, archive signature).
    #[error("could not fetch {input}: {detail}")]
    Download {
        /// The input.
        input: String,
        /// The tool's message.
        detail: String,
    },
    /// No Debian archive is configured on this machine.
    #[error("no Debian archive found in {searched}/sources.list(.d); configure apt first")]
    NoDebianMirror {
        /// Where we looked.
        searched: String,
    },
    /// An external tool is missing or failed to start.
    #[error("{tool} could not run ({detail}); install it with `{install}`")]
    Tool {
        /// The tool.
        tool: String,
        /// What happened.
        detail: String,
        /// How to install it.
        install: String,
    },
    /// A kernel module could not be resolved or read.
    #[error("kernel module {module}: {reason}")]
    Module {
        /// The module (name or path).
        module: String,
        /// What is wrong.
        reason: String,
    },
    /// The initramfs could not be assembled.
    #[error("initramfs: {0}")]
    Cpio(#[from] cpio::CpioError),
    /// Compiling the guest binaries failed.
    #[error("compiling the guest binaries failed: {0}")]
    Compile(String),
    /// The build environment does not match the lock (e.g. another libzstd).
    #[error("{0}")]
    Environment(String),
    /// `build --check` found differences.
    #[error("the rebuild differs from {manifest} in: {}", differences.join(", "))]
    NotReproduced {
        /// The manifest checked against.
        manifest: String,
        /// Each differing output or input.
        differences: Vec<String>,
    },
    /// Booting the image failed.
    #[error("{0}")]
    Boot(String),
}
