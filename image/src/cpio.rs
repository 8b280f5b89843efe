//! Our own writer (and reader) of the "newc" cpio format the kernel unpacks as an
//! initramfs. Everything that could vary between builds is fixed: paths are sorted, every
//! mtime is the build's SOURCE_DATE_EPOCH, uid and gid are 0, inode numbers run in order
//! from 1, and modes come from the caller, never from the files on disk. It must never
//! read metadata (mtime, owner, permissions, inode) from the building machine.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// The magic of a newc header (no checksum).
const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Length of a newc header: magic plus 13 eight-digit hex fields.
const HEADER_LEN: usize = 110;
/// Name of the entry that ends an archive.
const TRAILER_NAME: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFBLK: u32 = 0o060_000;

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// Bytes held in memory.
    Bytes(Vec<u8>),
    /// A file read while writing (large inputs such as the model).
    Path(PathBuf),
}

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with its permission bits.
    Directory { mode: u32 },
    /// A regular file.
    File { mode: u32, data: FileData },
    /// A symbolic link to `target`.
    Symlink { target: String },
    /// A character device node.
    CharDevice { mode: u32, major: u32, minor: u32 },
    /// A block device node.
    BlockDevice { mode: u32, major: u32, minor: u32 },
}

/// Why an entry could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpioError {
    /// A path was empty, absolute-only, or held `.`/`..` components.
    #[error("{0:?} is not a clean path inside the archive")]
    BadPath(String),
    /// A path was added twice.
    #[error("{0:?} is already in the archive")]
    Duplicate(String),
    /// A path's parent is a file, not a directory.
    #[error("the parent of {0:?} is not a directory")]
    ParentNotDirectory(String),
    /// Bytes that are not a well-formed newc archive.
    #[error("not a newc cpio archive: {0}")]
    Malformed(String),
}

/// An initramfs being assembled: paths (without the leading `/`) to entries.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

fn clean(path: &str) -> Result<String, CpioError> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || trimmed.contains('\0')
    {
        return Err(CpioError::BadPath(path.to_string()));
    }
    Ok(trimmed.to_string())
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `entry` at `path`, creating missing parent directories with mode 0755.
    pub fn add(&mut self, path: &str, entry: Entry) -> Result<(), CpioError> {
        let path = clean(path)?;
        let mut parent = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for component in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            match self.entries.get(&parent) {
                None => {
                    self.entries
                        .insert(parent.clone(), Entry::Directory { mode: 0o755 });
                }
                Some(Entry::Directory { .. }) => {}
                Some(_) => return Err(CpioError::ParentNotDirectory(path)),
            }
        }
        match self.entries.get(&path) {
            // An explicit directory may restate one created as a parent.
            Some(Entry::Directory { .. }) if matches!(entry, Entry::Directory { .. }) => {}
            Some(_) => return Err(CpioError::Duplicate(path)),
            None => {}
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
        self.add(path, Entry::Directory { mode })
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: FileData) -> Result<(), CpioError> {
        self.add(path, Entry::File { mode, data })
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.add(
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Adds a character device node.
    pub fn char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.add(path, Entry::CharDevice { mode, major, minor })
    }

    /// The entries in archive order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// Writes the archive in newc format, every mtime set to `mtime` (seconds).
    pub fn write_to(&self, out: &mut impl Write, mtime: u32) -> io::Result<u64> {
        let mut w = CountingWriter {
            inner: out,
            written: 0,
        };
        for (index, (path, entry)) in self.entries.iter().enumerate() {
            let ino = u32::try_from(index + 1).map_err(|_| io::Error::other("too many entries"))?;
            let (mode, nlink, rdev, body): (u32, u32, (u32, u32), Body<'_>) = match entry {
                Entry::Directory { mode } => (S_IFDIR | (mode & 0o7777), 2, (0, 0), Body::None),
                Entry::File { mode, data } => {
                    (S_IFREG | (mode & 0o7777), 1, (0, 0), Body::File(data))
                }
                Entry::Symlink { target } => {
                    (S_IFLNK | 0o777, 1, (0, 0), Body::Bytes(target.as_bytes()))
                }
                Entry::CharDevice { mode, major, minor } => {
                    (S_IFCHR | (mode & 0o7777), 1, (*major, *minor), Body::None)
                }
                Entry::BlockDevice { mode, major, minor } => {
                    (S_IFBLK | (mode & 0o7777), 1, (*major, *minor), Body::None)
                }
            };
            let size = body.len()?;
            let size32 = u32::try_from(size)
                .map_err(|_| io::Error::other(format!("{path} is larger than 4 GiB")))?;
            let header = Header {
                ino,
                mode,
                nlink,
                mtime,
                size: size32,
                rdev,
            };
            header.write(&mut w, path)?;
            body.write(&mut w, size)?;
            w.pad4()?;
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            size: 0,
            rdev: (0, 0),
        };
        trailer.write(&mut w, TRAILER_NAME)?;
        Ok(w.written)
    }
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> CountingWriter<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }
}

enum Body<'a> {
    None,
    Bytes(&'a [u8]),
    File(&'a FileData),
}

impl Body<'_> {
    fn len(&self) -> io::Result<u64> {
        Ok(match self {
            Body::None => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File(FileData::Bytes(b)) => b.len() as u64,
            Body::File(FileData::Path(p)) => std::fs::metadata(p)?.len(),
        })
    }

    fn write<W: Write>(&self, w: &mut CountingWriter<'_, W>, size: u64) -> io::Result<()> {
        match self {
            Body::None => Ok(()),
            Body::Bytes(b) => w.put(b),
            Body::File(FileData::Bytes(b)) => w.put(b),
            Body::File(FileData::Path(p)) => {
                let mut file = File::open(p)?;
                let mut buf = vec![0u8; 1 << 20];
                let mut left = size;
                while left > 0 {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        return Err(io::Error::other(format!(
                            "{} shrank while writing",
                            p.display()
                        )));
                    }
                    let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                    w.put(&buf[..n])?;
                    left -= n as u64;
                }
                Ok(())
            }
        }
    }
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
}

impl Header {
    fn write<W: Write>(&self, w: &mut CountingWriter<'_, W>, name: &str) -> io::Result<()> {
        let namesize =
            u32::try_from(name.len() + 1).map_err(|_| io::Error::other("name too long"))?;
        let fields = [
            self.ino,
            self.mode,
            0,
            0,
            self.nlink,
            self.mtime,
            self.size,
            0,
            0,
            self.rdev.0,
            self.rdev.1,
            namesize,
            0,
        ];
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(NEWC_MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        w.put(&header)?;
        w.put(name.as_bytes())?;
        w.put(&[0])?;
        w.pad4()
    }
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEntry {
    /// Path inside the archive.
    pub path: String,
    /// Inode number.
    pub ino: u32,
    /// Full mode, file type included.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time, seconds.
    pub mtime: u32,
    /// Device numbers of a device node.
    pub rdev: (u32, u32),
    /// File contents, or a symlink's target.
    pub data: Vec<u8>,
}

/// Reads a newc archive back (tests, and `build --check` to say which files differ).
pub fn parse(bytes: &[u8]) -> Result<Vec<ParsedEntry>, CpioError> {
    let bad = |what: &str| CpioError::Malformed(what.to_string());
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        let header = bytes
            .get(at..at + HEADER_LEN)
            .ok_or_else(|| bad("truncated header"))?;
        if &header[..6] != NEWC_MAGIC {
            return Err(bad("bad magic"));
        }
        let mut fields = [0u32; 13];
        for (i, field) in fields.iter_mut().enumerate() {
            let hex = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .map_err(|_| bad("bad field"))?;
            *field = u32::from_str_radix(hex, 16).map_err(|_| bad("bad field"))?;
        }
        let namesize = fields[11] as usize;
        let name_end = at + HEADER_LEN + namesize;
        let name = bytes
            .get(at + HEADER_LEN..name_end.saturating_sub(1))
            .ok_or_else(|| bad("truncated name"))?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad("name not UTF-8"))?;
        let data_start = name_end.div_ceil(4) * 4;
        let data_end = data_start + fields[6] as usize;
        let data = bytes
            .get(data_start..data_end)
            .ok_or_else(|| bad("truncated data"))?;
        at = data_end.div_ceil(4) * 4;
        if name == TRAILER_NAME {
            return Ok(out);
        }
        out.push(ParsedEntry {
            path: name,
            ino: fields[0],
            mode: fields[1],
            uid: fields[2],
            gid: fields[3],
            nlink: fields[4],
            mtime: fields[5],
            rdev: (fields[9], fields[10]),
            data: data.to_vec(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.file("init", 0o755, FileData::Bytes(b"#!init".to_vec()))
            .unwrap();
        a.char_device("/dev/console", 0o600, 5, 1).unwrap();
        a.char_device("dev/null", 0o666, 1, 3).unwrap();
        a.symlink("bin/sh", "/init").unwrap();
        a.file(
            "etc/cloister/modules.list",
            0o644,
            FileData::Bytes(b"/a.ko.xz\n".to_vec()),
        )
        .unwrap();
        a.dir("proc", 0o555).unwrap();
        a
    }

    fn written(a: &Archive, mtime: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let n = a.write_to(&mut out, mtime).unwrap();
        assert_eq!(n as usize, out.len());
        out
    }

    #[test]
    fn entries_come_back_sorted_with_fixed_metadata() {
        let entries = parse(&written(&sample(), 1_700_000_000)).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "dev/null",
                "etc",
                "etc/cloister",
                "etc/cloister/modules.list",
                "init",
                "proc"
            ]
        );
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.ino as usize, i + 1, "{}", e.path);
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 1_700_000_000), "{}", e.path);
        }
        let init = entries.iter().find(|e| e.path == "init").unwrap();
        assert_eq!(
            (init.mode, init.data.as_slice()),
            (0o100_755, &b"#!init"[..])
        );
        let proc = entries.iter().find(|e| e.path == "proc").unwrap();
        assert_eq!(proc.mode, 0o040_555);
    }

    #[test]
    fn device_nodes_and_symlinks_are_encoded() {
        let entries = parse(&written(&sample(), 0)).unwrap();
        let console = entries.iter().find(|e| e.path == "dev/console").unwrap();
        assert_eq!((console.mode, console.rdev), (0o020_600, (5, 1)));
        assert!(console.data.is_empty());
        let sh = entries.iter().find(|e| e.path == "bin/sh").unwrap();
        assert_eq!((sh.mode, sh.data.as_slice()), (0o120_777, &b"/init"[..]));
    }

    #[test]
    fn gnu_cpio_reads_our_archive() {
        let bytes = written(&sample(), 86_400);
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, &bytes).unwrap();
        let Ok(out) = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet", "-F"])
            .arg(&archive)
            .output()
        else {
            eprintln!("cpio is not installed; skipping the cross-check");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 10, "{listing}");
        let console = lines.iter().find(|l| l.ends_with("dev/console")).unwrap();
        assert!(console.starts_with("crw-------"), "{console}");
        assert!(
            console.contains("5,") && console.contains(" 1 Jan  2  1970"),
            "{console}"
        );
        let sh = lines.iter().find(|l| l.contains("bin/sh")).unwrap();
        assert!(
            sh.starts_with("lrwxrwxrwx") && sh.ends_with("bin/sh -> /init"),
            "{sh}"
        );
        assert!(
            lines
                .iter()
                .all(|l| l.contains(" root ") || l.contains(" 0 ")),
            "{listing}"
        );
    }

    #[test]
    fn the_same_entries_give_the_same_bytes_whatever_the_insertion_order() {
        let mut b = Archive::new();
        b.dir("proc", 0o555).unwrap();
        b.file(
            "etc/cloister/modules.list",
            0o644,
            FileData::Bytes(b"/a.ko.xz\n".to_vec()),
        )
        .unwrap();
        b.symlink("bin/sh", "/init").unwrap();
        b.char_device("dev/null", 0o666, 1, 3).unwrap();
        b.char_device("dev/console", 0o600, 5, 1).unwrap();
        b.file("init", 0o755, FileData::Bytes(b"#!init".to_vec()))
            .unwrap();
        assert_eq!(written(&sample(), 7), written(&b, 7));
        assert_ne!(written(&sample(), 7), written(&sample(), 8));
    }

    #[test]
    fn files_from_disk_keep_only_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, vec![7u8; 5]).unwrap();
        let mut a = Archive::new();
        a.file("m", 0o444, FileData::Path(path)).unwrap();
        let e = &parse(&written(&a, 0)).unwrap()[0];
        assert_eq!((e.mode, e.data.as_slice()), (0o100_444, &[7u8; 5][..]));
    }

    #[test]
    fn bad_paths_and_duplicates_are_refused() {
        let mut a = sample();
        assert_eq!(a.dir("../x", 0o755), Err(CpioError::BadPath("../x".into())));
        assert_eq!(a.dir("/", 0o755), Err(CpioError::BadPath("/".into())));
        assert_eq!(
            a.file("init", 0o644, FileData::Bytes(vec![])),
            Err(CpioError::Duplicate("init".into()))
        );
        assert_eq!(
            a.file("init/x", 0o644, FileData::Bytes(vec![])),
            Err(CpioError::ParentNotDirectory("init/x".into()))
        );
        assert!(parse(b"070702junk").is_err());
        assert!(parse(&written(&sample(), 0)[..200]).is_err());
    }
}
