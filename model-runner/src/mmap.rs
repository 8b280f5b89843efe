//! Memory-maps a model file read-only, so weights are read in place, not copied at load.
//!
//! The one place in the crate that needs `unsafe` for file access. It must never map a file
//! writable or hand out a mutable view.
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

/// A read-only view of a whole file.
#[derive(Debug)]
pub struct MappedFile {
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> std::io::Result<MappedFile> {
        let file = File::open(path)?;
        // SAFETY: the map is read-only and private to this process. Model files are
        // installed read-only (in the image, or on a dm-verity disk) and never rewritten
        // while served; a concurrent truncation could fault, which is why the file must
        // not be edited in place while the runner holds it (documented in the runner's docs).
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(MappedFile { map })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}
