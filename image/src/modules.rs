//! Which kernel modules go into the image, and in what order init loads them. The order
//! comes from the dependency data of the pinned kernel at build time: `modules.dep` where
//! the tree has one, else each module's own `.modinfo` `depends=` (what depmod reads;
//! Debian's package ships no modules.dep, its postinst runs depmod). Dependencies always
//! come before the modules that need them. This module must never guess an order.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::ImageError;

/// A module as found in the kernel tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Module name as the kernel knows it (underscores).
    pub name: String,
    /// Path relative to `lib/modules/<release>/`.
    pub relative_path: String,
    /// Names of the modules it needs loaded first.
    pub depends: Vec<String>,
}

/// Kernel module names treat `-` and `_` alike; the kernel uses `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The dependency graph of the modules of one kernel tree.
#[derive(Debug, Default, Clone)]
pub struct ModuleGraph {
    modules: BTreeMap<String, ModuleInfo>,
    aliases: BTreeMap<String, String>,
}

impl ModuleGraph {
    /// A graph from `modules.dep` text (`path: dep-path dep-path ...`).
    pub fn from_modules_dep(text: &str) -> Self {
        let name_of = |path: &str| {
            let file = path.rsplit('/').next().unwrap_or(path);
            normalize(file.split(".ko").next().unwrap_or(file))
        };
        let mut graph = Self::default();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let info = ModuleInfo {
                name: name_of(path.trim()),
                relative_path: path.trim().to_string(),
                depends: deps.split_whitespace().map(name_of).collect(),
            };
            graph.modules.insert(info.name.clone(), info);
        }
        graph
    }

    /// Adds `modules.alias` text (`alias PATTERN MODULE`); exact patterns only.
    pub fn add_aliases(&mut self, text: &str) {
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(alias), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                self.aliases.insert(normalize(alias), normalize(module));
            }
        }
    }

    /// Adds one module (from its `.modinfo`).
    pub fn insert(&mut self, info: ModuleInfo, aliases: &[String]) {
        for alias in aliases {
            self.aliases
                .entry(normalize(alias))
                .or_insert_with(|| info.name.clone());
        }
        self.modules.insert(info.name.clone(), info);
    }

    /// The module a wanted name or alias stands for.
    pub fn resolve(&self, wanted: &str) -> Option<&ModuleInfo> {
        let name = normalize(wanted);
        self.modules
            .get(&name)
            .or_else(|| self.aliases.get(&name).and_then(|m| self.modules.get(m)))
    }

    /// The load order for `wanted`: every module after all its dependencies, each once,
    /// otherwise in the order asked. Fails on an unknown name or a dependency cycle.
    pub fn load_order(&self, wanted: &[String]) -> Result<Vec<&ModuleInfo>, ImageError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for name in wanted {
            let info = self.resolve(name).ok_or_else(|| ImageError::Module {
                module: name.clone(),
                reason: "no such module or alias in the kernel package".into(),
            })?;
            self.visit(info, &mut Vec::new(), &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit<'a>(
        &'a self,
        info: &'a ModuleInfo,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<&'a ModuleInfo>,
    ) -> Result<(), ImageError> {
        if done.contains(&info.name) {
            return Ok(());
        }
        if path.contains(&info.name) {
            return Err(ImageError::Module {
                module: info.name.clone(),
                reason: format!("dependency cycle: {} -> {}", path.join(" -> "), info.name),
            });
        }
        path.push(info.name.clone());
        for dep in &info.depends {
            let dep_info = self.modules.get(dep).ok_or_else(|| ImageError::Module {
                module: info.name.clone(),
                reason: format!("depends on {dep}, which the kernel package lacks"),
            })?;
            self.visit(dep_info, path, done, order)?;
        }
        path.pop();
        done.insert(info.name.clone());
        order.push(info);
        Ok(())
    }
}

/// The `.modinfo` strings of a module file (`.ko`, or `.ko.xz` as Debian ships them).
pub fn read_modinfo(path: &Path) -> Result<Vec<(String, String)>, ImageError> {
    let err = |reason: String| ImageError::Module {
        module: path.display().to_string(),
        reason,
    };
    let elf = if path.extension().is_some_and(|e| e == "xz") {
        decompress_xz(path)?
    } else {
        fs::read(path).map_err(|e| err(e.to_string()))?
    };
    let section = elf_section(&elf, ".modinfo").ok_or_else(|| err("no .modinfo section".into()))?;
    Ok(section
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The decompressed bytes of an `.xz` module file.
pub fn decompress_xz(path: &Path) -> Result<Vec<u8>, ImageError> {
    let err = |reason: String| ImageError::Module {
        module: path.display().to_string(),
        reason,
    };
    let raw = fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    lzma_rs::xz_decompress(&mut BufReader::new(raw.as_slice()), &mut out)
        .map_err(|e| err(format!("bad xz data: {e}")))?;
    Ok(out)
}

/// The bytes of a named section of a little-endian ELF64 file.
fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let off = usize::try_from(u64_at(at + 0x18)?).ok()?;
        let size = usize::try_from(u64_at(at + 0x20)?).ok()?;
        Some((u32_at(at)?, off, size))
    };
    let (_, str_off, str_size) = section(shstrndx)?;
    let names = elf.get(str_off..str_off.checked_add(str_size)?)?;
    for i in 0..shnum {
        let (name_at, off, size) = section(i)?;
        let name = names.get(name_at as usize..)?;
        let name = &name[..name.iter().position(|&b| b == 0)?];
        if name == wanted.as_bytes() {
            return elf.get(off..off.checked_add(size)?);
        }
    }
    None
}

/// Every module file under a kernel's module folder, by normalized file stem.
fn module_files(modules_dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![modules_dir.join("kernel")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(file) = path.file_name().and_then(|f| f.to_str())
                && let Some((stem, _)) = file.split_once(".ko")
            {
                out.insert(normalize(stem), path);
            }
        }
    }
    out
}

/// The graph for the modules needed by `wanted` in the tree at `modules_dir`
/// (`lib/modules/<release>`): from `modules.dep` when present, else from `.modinfo`,
/// reading only the modules reached (all of them when a name is an alias).
pub fn graph_for(modules_dir: &Path, wanted: &[String]) -> Result<ModuleGraph, ImageError> {
    if let Ok(text) = fs::read_to_string(modules_dir.join("modules.dep")) {
        let mut graph = ModuleGraph::from_modules_dep(&text);
        if let Ok(aliases) = fs::read_to_string(modules_dir.join("modules.alias")) {
            graph.add_aliases(&aliases);
        }
        return Ok(graph);
    }
    let files = module_files(modules_dir);
    let mut graph = ModuleGraph::default();
    let mut queue: Vec<String> = wanted.iter().map(|w| normalize(w)).collect();
    if queue.iter().any(|w| !files.contains_key(w)) {
        // A name that is no file's stem may be an alias: read every module.
        queue = files.keys().cloned().collect();
    }
    let mut seen = BTreeSet::new();
    while let Some(stem) = queue.pop() {
        if !seen.insert(stem.clone()) {
            continue;
        }
        let Some(path) = files.get(&stem) else {
            continue;
        };
        let info = read_modinfo(path)?;
        let get = |key: &'static str| {
            info.iter()
                .filter(move |(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let depends: Vec<String> = get("depends")
            .flat_map(|v| v.split(','))
            .filter(|d| !d.is_empty())
            .map(normalize)
            .collect();
        queue.extend(depends.iter().cloned());
        let relative_path = path
            .strip_prefix(modules_dir)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned();
        let name = get("name").next().map(normalize).unwrap_or(stem);
        let aliases: Vec<String> = get("alias").map(str::to_string).collect();
        graph.insert(
            ModuleInfo {
                name,
                relative_path,
                depends,
            },
            &aliases,
        );
    }
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape of the real dependencies in Debian's 6.12 cloud kernel.
    const DEP: &str = "\
kernel/arch/x86/crypto/aesni-intel.ko.xz: kernel/crypto/crypto_simd.ko.xz kernel/crypto/cryptd.ko.xz
kernel/crypto/crypto_simd.ko.xz: kernel/crypto/cryptd.ko.xz
kernel/crypto/cryptd.ko.xz:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/drivers/md/dm-verity.ko.xz: kernel/drivers/md/dm-bufio.ko.xz kernel/drivers/md/dm-mod.ko.xz
kernel/drivers/md/dm-bufio.ko.xz:
kernel/drivers/md/dm-mod.ko.xz:
kernel/drivers/char/hw_random/virtio-rng.ko.xz:
";

    fn names(order: &[&ModuleInfo]) -> Vec<String> {
        order.iter().map(|m| m.name.clone()).collect()
    }

    #[test]
    fn dependencies_come_first_and_each_module_once() {
        let graph = ModuleGraph::from_modules_dep(DEP);
        let wanted = ["aesni-intel", "virtio_net", "dm-verity", "dm_mod"].map(String::from);
        let order = names(&graph.load_order(&wanted).unwrap());
        assert_eq!(
            order,
            [
                "cryptd",
                "crypto_simd",
                "aesni_intel",
                "failover",
                "net_failover",
                "virtio_net",
                "dm_bufio",
                "dm_mod",
                "dm_verity"
            ]
        );
        let pos = |n: &str| order.iter().position(|m| m == n).unwrap();
        assert!(
            pos("cryptd") < pos("crypto_simd"),
            "crypto_simd before cryptd fails to load"
        );
    }

    #[test]
    fn names_resolve_through_aliases() {
        let mut graph = ModuleGraph::from_modules_dep(DEP);
        graph.add_aliases("alias crypto-aes-ni aesni_intel\nalias hwrng-virtio virtio_rng\n");
        let order = graph.load_order(&["crypto-aes-ni".to_string()]).unwrap();
        assert_eq!(names(&order), ["cryptd", "crypto_simd", "aesni_intel"]);
        assert_eq!(
            graph.resolve("virtio-rng").unwrap().relative_path,
            "kernel/drivers/char/hw_random/virtio-rng.ko.xz"
        );
    }

    #[test]
    fn an_unknown_module_or_missing_dependency_is_an_error() {
        let graph = ModuleGraph::from_modules_dep(DEP);
        let err = graph.load_order(&["nonexistent".to_string()]).unwrap_err();
        assert!(err.to_string().contains("nonexistent"), "{err}");
        let broken = ModuleGraph::from_modules_dep("kernel/a.ko.xz: kernel/b.ko.xz\n");
        let err = broken.load_order(&["a".to_string()]).unwrap_err();
        assert!(err.to_string().contains("depends on b"), "{err}");
    }

    #[test]
    fn a_cycle_is_an_error_not_a_hang() {
        let graph = ModuleGraph::from_modules_dep("a.ko: b.ko\nb.ko: a.ko\n");
        let err = graph.load_order(&["a".to_string()]).unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
    }

    fn tiny_elf(modinfo: &[u8]) -> Vec<u8> {
        // ELF64 header, then .shstrtab and .modinfo contents, then three section headers.
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let str_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let info_off = elf.len();
        elf.extend_from_slice(modinfo);
        let shoff = elf.len();
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        for (name, off, size) in [
            (0u32, 0usize, 0usize),
            (1, str_off, shstrtab.len()),
            (11, info_off, modinfo.len()),
        ] {
            let mut sh = [0u8; 64];
            sh[..4].copy_from_slice(&name.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&sh);
        }
        elf
    }

    #[test]
    fn modinfo_is_read_from_the_elf_section() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path();
        fs::create_dir_all(tree.join("kernel/crypto")).unwrap();
        fs::write(
            tree.join("kernel/crypto/crypto_simd.ko"),
            tiny_elf(b"alias=crypto-simd\0depends=cryptd\0name=crypto_simd\0"),
        )
        .unwrap();
        fs::write(
            tree.join("kernel/crypto/cryptd.ko"),
            tiny_elf(b"depends=\0name=cryptd\0"),
        )
        .unwrap();
        let graph = graph_for(tree, &["crypto-simd".to_string()]).unwrap();
        let order = graph.load_order(&["crypto-simd".to_string()]).unwrap();
        assert_eq!(names(&order), ["cryptd", "crypto_simd"]);
        assert_eq!(order[1].relative_path, "kernel/crypto/crypto_simd.ko");
        fs::write(tree.join("kernel/crypto/cryptd.ko"), b"not an elf").unwrap();
        assert!(graph_for(tree, &["cryptd".to_string()]).is_err());
    }
}
