//! Fetches the pinned inputs (Debian packages, the model wheel) into a cache folder and
//! holds each to its digest from the lock. Debian packages come through a private apt
//! configuration (own sources list, lists, cache and state folders under the cache) whose
//! mirror is the one already configured on this machine, read at run time. It must never
//! touch the system's apt state, never write a mirror host anywhere, and never hand out a
//! file whose digest was not checked.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ImageError;
use crate::lock::{DebianSource, check_digest, sha256_file};
use crate::progress::Progress;

/// Default cache folder; override with `CLOISTER_CACHE` or the build's `--cache`.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/cloister";

/// Debian suite codenames and aliases that mark a sources entry as a Debian archive.
const DEBIAN_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "stable",
    "testing",
    "unstable",
    "oldstable",
];

/// The Debian mirrors configured on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianMirrors {
    /// Base URI of the main archive (serves `trixie`).
    pub archive: String,
    /// Base URI of the security archive (serves `trixie-security`), where configured.
    pub security: Option<String>,
}

/// One `deb` entry of an apt sources file: its URI and suites.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceEntry {
    uri: String,
    suites: Vec<String>,
}

/// Reads the mirrors configured under `etc_apt` (normally `/etc/apt`): `sources.list`,
/// `sources.list.d/*.list` (one-line format) and `sources.list.d/*.sources` (deb822).
pub fn configured_mirrors(etc_apt: &Path) -> Result<DebianMirrors, ImageError> {
    let mut files = vec![etc_apt.join("sources.list")];
    if let Ok(dir) = fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut parts: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        parts.sort();
        files.extend(parts);
    }
    let mut entries = Vec::new();
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => entries.extend(parse_deb822(&text)),
            _ if file.file_name().is_some_and(|n| n == "sources.list")
                || file.extension().is_some_and(|e| e == "list") =>
            {
                entries.extend(parse_one_line(&text))
            }
            _ => {}
        }
    }
    mirrors_from_entries(&entries).ok_or_else(|| ImageError::NoDebianMirror {
        searched: etc_apt.display().to_string(),
    })
}

fn mirrors_from_entries(entries: &[SourceEntry]) -> Option<DebianMirrors> {
    let is_debian = |suite: &str, security: bool| {
        let base = suite.split(['-', '/']).next().unwrap_or(suite);
        DEBIAN_SUITES.contains(&base) && (suite.contains("security") == security)
    };
    let find = |security: bool| {
        entries
            .iter()
            .find(|e| e.suites.iter().any(|s| is_debian(s, security)))
            .map(|e| e.uri.trim_end_matches('/').to_string())
    };
    Some(DebianMirrors {
        archive: find(false)?,
        security: find(true),
    })
}

fn parse_one_line(text: &str) -> Vec<SourceEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push(SourceEntry {
                uri: uri.to_string(),
                suites: vec![suite.to_string()],
            });
        }
    }
    out
}

fn parse_deb822(text: &str) -> Vec<SourceEntry> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let (mut types, mut uris, mut suites, mut enabled) = (vec![], vec![], vec![], true);
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let words = || {
                value
                    .split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types = words(),
                "uris" => uris = words(),
                "suites" => suites = words(),
                "enabled" => enabled = value.trim() != "no",
                _ => {}
            }
        }
        if enabled && types.iter().any(|t| t == "deb") {
            out.extend(uris.into_iter().map(|uri| SourceEntry {
                uri,
                suites: suites.clone(),
            }));
        }
    }
    out
}

/// The inputs cache: downloads keyed by digest, plus the private apt state.
#[derive(Debug, Clone)]
pub struct InputCache {
    root: PathBuf,
    etc_apt: PathBuf,
}

impl InputCache {
    /// A cache rooted at `root`, reading mirrors from `/etc/apt`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            etc_apt: PathBuf::from("/etc/apt"),
        }
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io(what: String) -> impl FnOnce(std::io::Error) -> ImageError {
        move |source| ImageError::Io { what, source }
    }

    fn slot(&self, sha256: &str, name: &str) -> PathBuf {
        self.root.join("inputs").join(sha256).join(name)
    }

    /// Returns the cached file for `sha256` if present and intact; removes a corrupt one.
    fn cached(&self, sha256: &str, name: &str) -> Option<PathBuf> {
        let path = self.slot(sha256, name);
        match sha256_file(&path) {
            Ok(d) if d == sha256 => Some(path),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "cached file is corrupt, fetching again");
                let _ = fs::remove_file(&path);
                None
            }
            Err(_) => None,
        }
    }

    /// Moves a checked download into its digest slot.
    fn store(&self, downloaded: &Path, sha256: &str, name: &str) -> Result<PathBuf, ImageError> {
        let dest = self.slot(sha256, name);
        let parent = dest.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent).map_err(Self::io(format!("creating {}", parent.display())))?;
        fs::rename(downloaded, &dest).map_err(Self::io(format!("storing {}", dest.display())))?;
        Ok(dest)
    }

    fn scratch(&self, name: &str) -> Result<PathBuf, ImageError> {
        let dir = self
            .root
            .join("tmp")
            .join(format!("{name}.{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(Self::io(format!("creating {}", dir.display())))?;
        Ok(dir)
    }

    /// The pinned `.deb`, from the cache or through the private apt configuration.
    pub fn debian_package(
        &self,
        source: &DebianSource,
        package: &str,
        version: &str,
        sha256: &str,
        progress: &Progress,
    ) -> Result<PathBuf, ImageError> {
        let name = format!(
            "{package}_{}_{}.deb",
            version.replace(':', "%3a"),
            source.architecture
        );
        if let Some(path) = self.cached(sha256, &name) {
            progress.step(&format!("{package} {version}: cached"));
            return Ok(path);
        }
        progress.step(&format!("downloading {package} {version} with apt-get"));
        let apt = PrivateApt::create(self, source)?;
        apt.update()?;
        let dir = self.scratch("apt-download")?;
        let out = apt
            .command("apt-get")
            .arg("download")
            .arg(format!("{package}={version}"))
            .current_dir(&dir)
            .stdout(progress.tool_output())
            .output()
            .map_err(|e| ImageError::Tool {
                tool: "apt-get".into(),
                detail: e.to_string(),
                install: "apt-get install apt".into(),
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let _ = fs::remove_dir_all(&dir);
            if stderr.contains("was not found")
                || stderr.contains("Unable to locate package")
                || stderr.contains("Can't select")
            {
                return Err(ImageError::VersionGone {
                    package: package.into(),
                    version: version.into(),
                });
            }
            return Err(ImageError::Download {
                input: format!("{package} {version}"),
                detail: stderr.trim().to_string(),
            });
        }
        let downloaded = fs::read_dir(&dir)
            .map_err(Self::io(format!("reading {}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| ImageError::Download {
                input: format!("{package} {version}"),
                detail: "apt-get download saved no .deb".into(),
            })?;
        let checked = check_digest(&format!("{package} {version}"), &downloaded, sha256);
        let stored = checked.and_then(|()| self.store(&downloaded, sha256, &name));
        let _ = fs::remove_dir_all(&dir);
        stored
    }

    /// The pinned wheel, from the cache or with `pip download`.
    pub fn pypi_wheel(
        &self,
        project: &str,
        version: &str,
        wheel: &str,
        sha256: &str,
        progress: &Progress,
    ) -> Result<PathBuf, ImageError> {
        if let Some(path) = self.cached(sha256, wheel) {
            progress.step(&format!("{project} {version}: cached"));
            return Ok(path);
        }
        progress.step(&format!("downloading {project} {version} with pip"));
        let dir = self.scratch("pip-download")?;
        let out = Command::new("pip")
            .args([
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
            ])
            .arg(format!("{project}=={version}"))
            .arg("-d")
            .arg(&dir)
            .stdout(progress.tool_output())
            .output()
            .map_err(|e| ImageError::Tool {
                tool: "pip".into(),
                detail: e.to_string(),
                install: "apt-get install python3-pip".into(),
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let _ = fs::remove_dir_all(&dir);
            if stderr.contains("No matching distribution") {
                return Err(ImageError::VersionGone {
                    package: project.into(),
                    version: version.into(),
                });
            }
            return Err(ImageError::Download {
                input: format!("{project} {version}"),
                detail: stderr,
            });
        }
        let downloaded = dir.join(wheel);
        let checked = check_digest(
            &format!("{project} {version} ({wheel})"),
            &downloaded,
            sha256,
        );
        let stored = checked.and_then(|()| self.store(&downloaded, sha256, wheel));
        let _ = fs::remove_dir_all(&dir);
        stored
    }

    /// One member of a zip file (a wheel), extracted into the cache and checked.
    pub fn zip_member(
        &self,
        zip: &Path,
        member: &str,
        sha256: &str,
        input: &str,
    ) -> Result<PathBuf, ImageError> {
        let name = member.rsplit('/').next().unwrap_or(member);
        if let Some(path) = self.cached(sha256, name) {
            return Ok(path);
        }
        let dir = self.scratch("unzip")?;
        let out_path = dir.join(name);
        // Python's zipfile: pip needs python3 anyway, and this keeps a zip crate out.
        let status = Command::new("python3")
            .args([
                "-c",
                "import sys, zipfile, shutil\n\
                 with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, \
                 open(sys.argv[3], 'wb') as dst: shutil.copyfileobj(src, dst)",
            ])
            .arg(zip)
            .arg(member)
            .arg(&out_path)
            .status()
            .map_err(|e| ImageError::Tool {
                tool: "python3".into(),
                detail: e.to_string(),
                install: "apt-get install python3".into(),
            })?;
        if !status.success() {
            return Err(ImageError::Download {
                input: input.into(),
                detail: format!("{member} could not be extracted from {}", zip.display()),
            });
        }
        let checked = check_digest(input, &out_path, sha256);
        let stored = checked.and_then(|()| self.store(&out_path, sha256, name));
        let _ = fs::remove_dir_all(&dir);
        stored
    }

    /// A `.deb` unpacked (with `dpkg-deb -x`) into the cache, keyed by its digest.
    pub fn unpacked_deb(&self, deb: &Path, sha256: &str) -> Result<PathBuf, ImageError> {
        let dest = self.root.join("unpacked").join(sha256);
        if dest.join(".complete").exists() {
            return Ok(dest);
        }
        let dir = self.scratch("unpack")?;
        let out = Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(&dir)
            .output()
            .map_err(|e| ImageError::Tool {
                tool: "dpkg-deb".into(),
                detail: e.to_string(),
                install: "apt-get install dpkg".into(),
            })?;
        if !out.status.success() {
            return Err(ImageError::Download {
                input: deb.display().to_string(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        fs::write(dir.join(".complete"), b"").map_err(Self::io("marking unpack".into()))?;
        let _ = fs::remove_dir_all(&dest);
        fs::create_dir_all(dest.parent().unwrap_or(&self.root))
            .map_err(Self::io("creating the unpack folder".into()))?;
        fs::rename(&dir, &dest).map_err(Self::io(format!("storing {}", dest.display())))?;
        Ok(dest)
    }
}

/// apt-get with its own sources list, lists, cache and state under the cache folder.
#[derive(Debug)]
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn create(cache: &InputCache, source: &DebianSource) -> Result<Self, ImageError> {
        let mirrors = configured_mirrors(&cache.etc_apt)?;
        let dir = cache.root.join("apt");
        for sub in [
            "etc/sources.list.d",
            "etc/preferences.d",
            "lists/partial",
            "archives/partial",
            "state",
        ] {
            fs::create_dir_all(dir.join(sub)).map_err(InputCache::io(format!(
                "creating {}",
                dir.join(sub).display()
            )))?;
        }
        let status = dir.join("state/status");
        if !status.exists() {
            fs::write(&status, b"").map_err(InputCache::io("creating apt status".into()))?;
        }
        let list = sources_list(&mirrors, source);
        fs::write(dir.join("etc/sources.list"), list)
            .map_err(InputCache::io("writing the private sources.list".into()))?;
        Ok(Self { dir })
    }

    fn command(&self, tool: &str) -> Command {
        let d = self.dir.display();
        let mut cmd = Command::new(tool);
        for opt in [
            format!("Dir::Etc={d}/etc"),
            format!("Dir::Etc::sourcelist={d}/etc/sources.list"),
            format!("Dir::Etc::sourceparts={d}/etc/sources.list.d"),
            format!("Dir::Etc::preferencesparts={d}/etc/preferences.d"),
            format!("Dir::State={d}/state"),
            format!("Dir::State::lists={d}/lists"),
            format!("Dir::State::status={d}/state/status"),
            format!("Dir::Cache={d}"),
            format!("Dir::Cache::archives={d}/archives"),
            "Debug::NoLocking=1".to_string(),
            "APT::Sandbox::User=root".to_string(),
        ] {
            cmd.arg("-o").arg(opt);
        }
        cmd.arg("-q");
        cmd
    }

    fn update(&self) -> Result<(), ImageError> {
        let out = self
            .command("apt-get")
            .arg("update")
            .output()
            .map_err(|e| ImageError::Tool {
                tool: "apt-get".into(),
                detail: e.to_string(),
                install: "apt-get install apt".into(),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ImageError::Download {
                input: "the Debian package lists".into(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

/// The private sources.list: each pinned suite on the machine's mirror.
fn sources_list(mirrors: &DebianMirrors, source: &DebianSource) -> String {
    let mut list = String::new();
    for suite in &source.suites {
        let uri = if suite.ends_with("-security") {
            match &mirrors.security {
                Some(uri) => uri,
                None => continue,
            }
        } else {
            &mirrors.archive
        };
        list.push_str(&format!(
            "deb [arch={} signed-by={}] {uri} {suite} {}\n",
            source.architecture,
            source.keyring,
            source.components.join(" ")
        ));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\n\
        Suites: bookworm bookworm-updates\nComponents: main\n\n\
        Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n\
        Components: main\n\nTypes: deb\nURIs: https://other.invalid/node\nSuites: nodistro\n";

    #[test]
    fn deb822_sources_give_archive_and_security_mirrors() {
        let m = mirrors_from_entries(&parse_deb822(DEB822)).unwrap();
        assert_eq!(m.archive, "http://mirror.invalid/debian");
        assert_eq!(
            m.security.as_deref(),
            Some("http://mirror.invalid/debian-security")
        );
    }

    #[test]
    fn one_line_sources_with_options_are_read() {
        let text = "# deb http://commented.invalid/debian trixie main\n\
            deb-src http://src.invalid/debian trixie main\n\
            deb [arch=amd64 signed-by=/k.gpg] http://one.invalid/debian/ trixie main\n\
            deb https://packages.invalid/apt cloud-sdk-bookworm main\n";
        let m = mirrors_from_entries(&parse_one_line(text)).unwrap();
        assert_eq!(m.archive, "http://one.invalid/debian");
        assert_eq!(m.security, None);
    }

    #[test]
    fn a_machine_without_debian_sources_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sources.list.d")).unwrap();
        fs::write(
            dir.path().join("sources.list.d/node.sources"),
            "Types: deb\nURIs: https://x.invalid\nSuites: nodistro\n",
        )
        .unwrap();
        let err = configured_mirrors(dir.path()).unwrap_err();
        assert!(matches!(err, ImageError::NoDebianMirror { .. }), "{err}");
    }

    #[test]
    fn the_private_sources_list_uses_the_pinned_suites_on_the_machine_mirror() {
        let m = mirrors_from_entries(&parse_deb822(DEB822)).unwrap();
        let source = DebianSource {
            suites: vec!["trixie".into(), "trixie-security".into()],
            components: vec!["main".into()],
            architecture: "amd64".into(),
            keyring: "/usr/share/keyrings/debian-archive-keyring.gpg".into(),
        };
        let list = sources_list(&m, &source);
        assert_eq!(
            list,
            "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://mirror.invalid/debian trixie main\n\
             deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://mirror.invalid/debian-security trixie-security main\n"
        );
    }

    #[test]
    fn a_cached_input_with_a_wrong_digest_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = InputCache::new(dir.path());
        let good = crate::lock::sha256_bytes(b"good");
        let slot = cache.slot(&good, "x.deb");
        fs::create_dir_all(slot.parent().unwrap()).unwrap();
        fs::write(&slot, b"tampered").unwrap();
        assert_eq!(cache.cached(&good, "x.deb"), None);
        assert!(!slot.exists());
        fs::write(&slot, b"good").unwrap();
        assert_eq!(cache.cached(&good, "x.deb"), Some(slot));
    }
}
