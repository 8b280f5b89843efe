//! The lock file `image/lock.toml`: every pinned input of the image (Debian packages,
//! the model, the compressor) with its exact version and sha256, and the checks that
//! hold a downloaded file to it. It must never name a mirror host: mirrors come from the
//! building machine's apt configuration, and the digests here make any mirror safe.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ImageError;

/// File name of the lock inside the `image/` folder of the source tree.
pub const LOCK_FILE_NAME: &str = "lock.toml";

/// The whole lock file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Where Debian packages come from (suites, not hosts).
    pub debian: DebianSource,
    /// The kernel package and the modules init loads.
    pub kernel: KernelPin,
    /// TDVF firmware, for TDX boots and measurements (not inside the image).
    pub firmware: FirmwarePin,
    /// The default model shipped in the image.
    pub model: ModelPin,
    /// How the initramfs is compressed.
    pub initramfs: InitramfsPin,
    /// The Rust target the guest binaries are built for.
    pub toolchain: ToolchainPin,
}

/// Debian suites and keyring used by the private apt configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DebianSource {
    /// Suites such as `trixie` and `trixie-security`.
    pub suites: Vec<String>,
    /// Archive components such as `main`.
    pub components: Vec<String>,
    /// Debian architecture, `amd64`.
    pub architecture: String,
    /// Keyring apt checks the Release files with.
    pub keyring: String,
}

/// A Debian package pinned by exact name, version and digest of the `.deb`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KernelPin {
    /// Exact binary package name, e.g. `linux-image-6.12.117+deb13-cloud-amd64`.
    pub package: String,
    /// Exact Debian version.
    pub version: String,
    /// sha256 of the `.deb` file, lowercase hex.
    pub sha256: String,
    /// The kernel release, the name of its `lib/modules/` folder.
    pub release: String,
    /// The kernel command line of the image.
    pub cmdline: String,
    /// Modules init loads (names or aliases); dependencies are added at build time.
    pub modules: Vec<String>,
    /// Store modules uncompressed (`.ko`): the initramfs is compressed as a whole anyway,
    /// and init then skips the kernel's in-guest xz decompression at every boot.
    pub decompress_modules: bool,
}

/// The OVMF package and the one file of it we use.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FirmwarePin {
    /// Exact binary package name.
    pub package: String,
    /// Exact Debian version.
    pub version: String,
    /// sha256 of the `.deb`.
    pub sha256: String,
    /// Path of the firmware inside the package.
    pub file: String,
    /// sha256 of that file.
    pub file_sha256: String,
}

/// The model: a file inside a PyPI wheel.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelPin {
    /// PyPI project name.
    pub pypi: String,
    /// Exact version.
    pub version: String,
    /// Wheel file name pip saves.
    pub wheel: String,
    /// sha256 of the wheel.
    pub wheel_sha256: String,
    /// Path of the model inside the wheel.
    pub file: String,
    /// sha256 of the model file.
    pub file_sha256: String,
    /// Absolute path of the model inside the image.
    pub path: String,
}

/// The compressor of the initramfs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InitramfsPin {
    /// libzstd version the build must run with, e.g. `1.5.7`.
    pub zstd_library: String,
    /// zstd compression level.
    pub zstd_level: i32,
}

/// The Rust target of guest binaries.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ToolchainPin {
    /// Target triple, `x86_64-unknown-linux-musl`.
    pub target: String,
}

impl Lock {
    /// Reads and checks the lock file at `path`.
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImageError::Io {
            what: format!("reading the lock file {}", path.display()),
            source,
        })?;
        Self::parse(&text).map_err(|reason| ImageError::BadLock {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses lock text and checks its digests have the right shape.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lock: Lock = toml::from_str(text).map_err(|e| e.to_string())?;
        for (what, digest) in [
            ("kernel.sha256", &lock.kernel.sha256),
            ("firmware.sha256", &lock.firmware.sha256),
            ("firmware.file_sha256", &lock.firmware.file_sha256),
            ("model.wheel_sha256", &lock.model.wheel_sha256),
            ("model.file_sha256", &lock.model.file_sha256),
        ] {
            if digest.len() != 64
                || !digest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!("{what} is not 64 lowercase hex digits: {digest:?}"));
            }
        }
        if !lock.model.path.starts_with('/') {
            return Err("model.path must be absolute".into());
        }
        if !(1..=22).contains(&lock.initramfs.zstd_level) {
            return Err("initramfs.zstd_level must be between 1 and 22".into());
        }
        Ok(lock)
    }
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let io = |source| ImageError::Io {
        what: format!("hashing {}", path.display()),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// sha256 of bytes, lowercase hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks that the file at `path` has the pinned digest; `input` names it in the error.
pub fn check_digest(input: &str, path: &Path, expected: &str) -> Result<(), ImageError> {
    let actual = sha256_file(path)?;
    if actual == expected {
        Ok(())
    } else {
        Err(ImageError::DigestMismatch {
            input: input.to_string(),
            expected: expected.to_string(),
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_lock_text() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/lock.toml")).unwrap()
    }

    #[test]
    fn the_repository_lock_parses() {
        let lock = Lock::parse(&repo_lock_text()).unwrap();
        assert!(lock.kernel.package.starts_with("linux-image-6.12."));
        assert!(lock.kernel.package.ends_with("-cloud-amd64"));
        assert_eq!(lock.firmware.version, "2025.02-8+deb13u1");
        assert_eq!(lock.model.version, "0.1.2");
    }

    #[test]
    fn the_lock_names_no_host() {
        let text = repo_lock_text();
        assert!(!text.contains("http://") && !text.contains("https://"));
    }

    #[test]
    fn a_malformed_digest_is_refused() {
        let text = repo_lock_text().replace(
            "e9893e5295d0549b8852611f12a4b8b5f6cc4b8128dcc2086b9847793b904ab7",
            "E9893E",
        );
        let err = Lock::parse(&text).unwrap_err();
        assert!(err.contains("kernel.sha256"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let text = repo_lock_text().replace("[firmware]", "[firmware]\nmirror = \"x\"");
        assert!(Lock::parse(&text).unwrap_err().contains("mirror"));
    }

    #[test]
    fn a_wrong_digest_names_the_input_and_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernel.deb");
        std::fs::write(&path, b"not the kernel").unwrap();
        let pinned = "e9893e5295d0549b8852611f12a4b8b5f6cc4b8128dcc2086b9847793b904ab7";
        let err = check_digest("linux-image-6.12.117 6.12.117-1", &path, pinned).unwrap_err();
        let actual = sha256_bytes(b"not the kernel");
        let text = err.to_string();
        assert!(text.contains("linux-image-6.12.117 6.12.117-1"), "{text}");
        assert!(text.contains(pinned), "{text}");
        assert!(text.contains(&actual), "{text}");
        check_digest("same", &path, &actual).unwrap();
    }
}
