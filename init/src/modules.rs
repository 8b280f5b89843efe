//! Kernel modules: reads the image's `/etc/cloister/modules.list` and loads each module with
//! `finit_module(2)`, in the listed order.
//!
//! The order is the image builder's (computed from `modules.dep`); this module never
//! reorders, resolves dependencies or stops at a failure: a module that fails is logged and
//! the next one is tried.

use std::path::{Path, PathBuf};

use crate::sys::{System, is_errno};

/// Where the image builder writes the load order.
pub const MODULE_LIST_PATH: &str = "/etc/cloister/modules.list";
/// The largest module list init reads.
pub const MODULE_LIST_MAX_BYTES: usize = 256 * 1024;

/// A line of the module list that is not an absolute path.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("modules.list line {line}: {reason}")]
pub struct ModuleListError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses the module list: one absolute path per line, blank lines and `#` comments
/// ignored. Bad lines are returned as errors beside the good paths, which keep their order.
pub fn parse_module_list(text: &str) -> (Vec<PathBuf>, Vec<ModuleListError>) {
    let mut paths = Vec::new();
    let mut errors = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line_number = index + 1;
        if !line.starts_with('/') {
            errors.push(ModuleListError {
                line: line_number,
                reason: "not an absolute path",
            });
        } else if line.contains(char::is_whitespace) {
            errors.push(ModuleListError {
                line: line_number,
                reason: "path contains a space",
            });
        } else {
            paths.push(PathBuf::from(line));
        }
    }
    (paths, errors)
}

/// Whether the kernel must decompress the file (`MODULE_INIT_COMPRESSED_FILE`).
pub fn is_compressed_module(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("xz" | "zst" | "gz")
    )
}

/// What happened to one module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleOutcome {
    /// Loaded now.
    Loaded,
    /// Already in the kernel (EEXIST), which is fine.
    AlreadyLoaded,
    /// The module has no hardware to drive here (ENODEV), e.g. `tdx-guest` outside a TD.
    NoDevice,
    /// Could not be loaded; the text is the error.
    Failed(String),
}

/// The result of loading the list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleReport {
    /// Each listed module with its outcome, in load order.
    pub modules: Vec<(PathBuf, ModuleOutcome)>,
    /// Lines of the list that were skipped.
    pub list_errors: Vec<ModuleListError>,
}

impl ModuleReport {
    /// How many modules failed to load.
    pub fn failed(&self) -> usize {
        self.modules
            .iter()
            .filter(|(_, o)| matches!(o, ModuleOutcome::Failed(_)))
            .count()
    }
}

/// Loads the modules of the list file, in order. A missing list means no modules.
pub fn load_listed_modules(system: &impl System, list_path: &Path) -> ModuleReport {
    let text = match system.read_file(list_path, MODULE_LIST_MAX_BYTES) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(error) => {
            tracing::warn!(path = %list_path.display(), "no module list, loading none: {error}");
            return ModuleReport::default();
        }
    };
    let (paths, list_errors) = parse_module_list(&text);
    for error in &list_errors {
        tracing::error!("{error}");
    }
    let modules = paths
        .into_iter()
        .map(|path| {
            let outcome = load_one(system, &path);
            (path, outcome)
        })
        .collect();
    ModuleReport {
        modules,
        list_errors,
    }
}

fn load_one(system: &impl System, path: &Path) -> ModuleOutcome {
    match system.load_module(path, is_compressed_module(path)) {
        Ok(()) => {
            tracing::debug!(module = %path.display(), "loaded");
            ModuleOutcome::Loaded
        }
        Err(error) if is_errno(&error, libc::EEXIST) => ModuleOutcome::AlreadyLoaded,
        Err(error) if is_errno(&error, libc::ENODEV) => {
            tracing::info!(module = %path.display(), "no device for this module here");
            ModuleOutcome::NoDevice
        }
        Err(error) => {
            tracing::error!(module = %path.display(), "cannot load module: {error}");
            ModuleOutcome::Failed(error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, FakeSystem};

    const LIST: &str = "# computed from modules.dep\n\
        /lib/modules/6.12.57-cloud-amd64/kernel/fs/configfs/configfs.ko.xz\n\
        \n\
        /lib/modules/6.12.57-cloud-amd64/kernel/crypto/cryptd.ko.xz\n\
        \t/lib/modules/6.12.57-cloud-amd64/kernel/crypto/crypto_simd.ko.xz  \n\
        /lib/modules/6.12.57-cloud-amd64/kernel/net/vmw_vsock/vsock.ko\n";

    #[test]
    fn list_keeps_order_and_skips_comments_and_blanks() {
        let (paths, errors) = parse_module_list(LIST);
        assert!(errors.is_empty());
        let names: Vec<_> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "configfs.ko.xz",
                "cryptd.ko.xz",
                "crypto_simd.ko.xz",
                "vsock.ko"
            ]
        );
    }

    #[test]
    fn relative_paths_are_reported_with_their_line() {
        let (paths, errors) = parse_module_list("/a.ko\nkernel/b.ko\n/c d.ko\n/e.ko");
        assert_eq!(paths, [PathBuf::from("/a.ko"), PathBuf::from("/e.ko")]);
        assert_eq!(
            errors,
            [
                ModuleListError {
                    line: 2,
                    reason: "not an absolute path"
                },
                ModuleListError {
                    line: 3,
                    reason: "path contains a space"
                },
            ]
        );
    }

    #[test]
    fn compressed_modules_are_flagged_for_the_kernel() {
        assert!(is_compressed_module(Path::new("/m/vsock.ko.xz")));
        assert!(is_compressed_module(Path::new("/m/vsock.ko.zst")));
        assert!(!is_compressed_module(Path::new("/m/vsock.ko")));
        assert!(!is_compressed_module(Path::new("/m/xz")));
    }

    #[test]
    fn modules_load_in_listed_order_and_failures_do_not_stop_the_rest() {
        let system = FakeSystem::new();
        system.set_file(MODULE_LIST_PATH, LIST);
        let cryptd = "/lib/modules/6.12.57-cloud-amd64/kernel/crypto/cryptd.ko.xz";
        let configfs = "/lib/modules/6.12.57-cloud-amd64/kernel/fs/configfs/configfs.ko.xz";
        let crypto_simd = "/lib/modules/6.12.57-cloud-amd64/kernel/crypto/crypto_simd.ko.xz";
        system.fail_module(cryptd, libc::ENOEXEC);
        system.fail_module(configfs, libc::EEXIST);
        system.fail_module(crypto_simd, libc::ENODEV);
        let report = load_listed_modules(&system, Path::new(MODULE_LIST_PATH));

        let loads: Vec<_> = system
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::LoadModule { path, compressed } => Some((path, compressed)),
                _ => None,
            })
            .collect();
        let (expected, _) = parse_module_list(LIST);
        assert_eq!(
            loads.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
            expected
        );
        assert_eq!(
            loads.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        assert_eq!(report.modules[0].1, ModuleOutcome::AlreadyLoaded);
        assert!(matches!(report.modules[1].1, ModuleOutcome::Failed(_)));
        assert_eq!(report.modules[2].1, ModuleOutcome::NoDevice);
        assert_eq!(report.modules[3].1, ModuleOutcome::Loaded);
        assert_eq!(report.failed(), 1);
    }

    #[test]
    fn missing_list_loads_nothing() {
        let system = FakeSystem::new();
        let report = load_listed_modules(&system, Path::new(MODULE_LIST_PATH));
        assert!(report.modules.is_empty());
        assert!(
            !system
                .calls()
                .iter()
                .any(|c| matches!(c, Call::LoadModule { .. }))
        );
    }
}
